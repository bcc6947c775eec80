"""Contract cases (see tests/test_converter_contract.py) of the ssd converters: type -> (extra LayerParameter
text, bottom shapes, number of tops). DetectionOutput's row count is data-dependent; keep_top_k 1 on one image
gives the single row Caffe's Reshape states. DetectionEvaluate's rows are its positive classes, then one per
detection."""

CASES: dict = {
    "PriorBox": ("prior_box_param { min_size: 10 max_size: 20 aspect_ratio: 2 flip: true }",
                 [(2, 3, 4, 5), (2, 3, 40, 50)], 1),
    "DetectionOutput": ("detection_output_param { num_classes: 2 keep_top_k: 1 code_type: CORNER }",
                        [(1, 12), (1, 6), (1, 2, 12)], 1),
    # the contract's inputs are in [0.1, 1.1): images and labels 0 or 1, so the background is another class
    "DetectionEvaluate": ("detection_evaluate_param { num_classes: 4 background_label_id: 3 }",
                          [(1, 1, 6, 7), (1, 1, 3, 8)], 1),
    # loc, conf, prior, label of 3 priors; the labels (0 or 1) never the background 2
    "MultiBoxLoss": ("multibox_loss_param { num_classes: 3 background_label_id: 2 }",
                     [(2, 12), (2, 9), (1, 2, 12), (1, 1, 3, 8)], 1),
}
