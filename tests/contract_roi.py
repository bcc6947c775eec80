"""Contract cases (see tests/test_converter_contract.py) of the roi converters (converters/roi.py): type -> (extra
LayerParameter text, bottom shapes, number of tops). The contract's inputs are in [0.1, 1.1): each roi's batch
index truncates to 0 or 1 (a batch of 2) and its corners lie in the first pixels of the map."""

CASES: dict = {
    "ROIPooling": ("roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 }", [(2, 3, 6, 7), (4, 5)], 1),
    "PSROIPooling": ("psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 2 }",
                     [(2, 8, 6, 7), (4, 5)], 1),
    # predictions, targets, inside and outside weights (py-faster-rcnn's bbox regression loss)
    "SmoothL1Loss": ("smooth_l1_loss_param { sigma: 3 }", [(4, 8), (4, 8), (4, 8), (4, 8)], 1),
}
