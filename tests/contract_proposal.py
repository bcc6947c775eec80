"""Contract cases (see tests/test_converter_contract.py) of the proposal converters (converters/proposal.py): type ->
(extra LayerParameter text, bottom shapes, number of tops). The contract's inputs are in [0.1, 1.1): im_info's
image is under 2 pixels, every box clips to one pixel, below min_size, so all score 0 and the NMS keeps one
(post_nms_topn 1: the rows Caffe's Reshape states). py-faster-rcnn's Python ProposalLayer, a built-in Python layer
rather than a type, keeps its contract in tests/test_proposal.py."""

CASES: dict = {
    "Proposal": ("proposal_param { ratio: 0.5 ratio: 2 scale: 128 post_nms_topn: 1 }",
                 [(1, 4, 3, 4), (1, 8, 3, 4), (1, 3)], 2),
}
