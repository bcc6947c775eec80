"""Contract cases (see tests/test_converter_contract.py) of the ssd converters: type -> (extra LayerParameter
text, bottom shapes, number of tops). DetectionOutput's row count is data-dependent; keep_top_k 1 on one image
gives the single row Caffe's Reshape states."""

CASES: dict = {
    "PriorBox": ("prior_box_param { min_size: 10 max_size: 20 aspect_ratio: 2 flip: true }",
                 [(2, 3, 4, 5), (2, 3, 40, 50)], 1),
    "DetectionOutput": ("detection_output_param { num_classes: 2 keep_top_k: 1 code_type: CORNER }",
                        [(1, 12), (1, 6), (1, 2, 12)], 1),
}
