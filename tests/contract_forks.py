"""Contract cases (see tests/test_converter_contract.py) of the forks' pooling and normalisation layers: type ->
(extra LayerParameter text, bottom shapes, number of tops). Their parity against the fork and OpenCV is in
tests/test_fork_layers.py."""

CASES: dict = {
    "BN": ("bn_param { momentum: 0.8 eps: 0.001 }", [(2, 3, 4, 5)], 1),
    "MaxUnPool": ("max_unpool_param { dst_h: 8 dst_w: 10 }", [(2, 3, 4, 5), (2, 3, 4, 5)], 1),
    "PixelShuffle": ("pixelshuffle_param { upscale_factor: 2 }", [(2, 8, 4, 5)], 1),
}
