"""Contract cases (see tests/test_converter_contract.py) of the resize converters: type -> (extra LayerParameter
text, bottom shapes, number of tops). SegNet's two-bottom Upsample, Pooling's mask top and the other forms are
tested in tests/test_resize.py."""

CASES: dict = {
    "Upsample": ("", [(2, 3, 4, 5)], 1),
    "Interp": ("interp_param { zoom_factor: 2 pad_beg: -1 }", [(2, 3, 5, 6)], 1),
    "ShuffleChannel": ("shuffle_channel_param { group: 3 }", [(2, 6, 4, 5)], 1),
    "SPP": ("spp_param { pyramid_height: 3 pool: AVE }", [(2, 3, 7, 9)], 1),
    "Im2col": ("convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 1 }", [(2, 3, 7, 6)], 1),
}
