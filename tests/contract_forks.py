"""Contract cases (see tests/test_converter_contract.py) of the forks' pooling and normalisation layers: type ->
(extra LayerParameter text, bottom shapes, number of tops). Their parity against the fork and OpenCV is in
tests/test_fork_layers.py."""

CASES: dict = {
    "BN": ("bn_param { momentum: 0.8 eps: 0.001 }", [(2, 3, 4, 5)], 1),
    "MaxUnPool": ("max_unpool_param { dst_h: 8 dst_w: 10 }", [(2, 3, 4, 5), (2, 3, 4, 5)], 1),
    "PixelShuffle": ("pixelshuffle_param { upscale_factor: 2 }", [(2, 8, 4, 5)], 1),
    # converters/brocolli.py (parity: tests/test_brocolli.py)
    "HardSigmoid": ("hardsigmoid_param { alpha: 0.3 }", [(2, 3, 4, 5)], 1),
    "HardSwish": ("", [(2, 3, 4, 5)], 1),
    "Pad": ("pad_param { pad_u: 1 pad_l: 2 }", [(2, 3, 4, 5)], 1),
    "Unsqueeze": ("unsqueeze_param { dim: 1 }", [(2, 3, 4)], 1),
    # the brocolli fork's Resize, BilinearInterpolate and BatchNormKyle (converters/brocolli.py)
    "Resize": ("resize_param { height: 5 width: 7 }", [(2, 3, 4, 5)], 1),
    "BilinearInterpolate": ("bilinear_interpolate_param { scale_factor: 1.5 align_corners: false }", [(2, 3, 4, 5)], 1),
    "BatchNormKyle": ("batch_norm_param { moving_average_fraction: 0.9 use_alpha_beta: true }", [(2, 3, 4, 5)], 1),
}
