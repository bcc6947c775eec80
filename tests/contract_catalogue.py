"""Contract cases (see tests/test_converter_contract.py) of the catalogue converters: type -> (extra LayerParameter
text, bottom shapes, number of tops). The contract's inputs are uniform in (0.1, 1.1) (a "label" bottom: integers
0..4), so Embed's indices truncate to 0 and 1, BatchReindex's labels index a batch of 5, and Filter's selector
keeps every item (its tops then have the shapes Caffe's first Reshape states). Forms, edge cases and gradients
are tested in tests/test_catalogue.py."""

IMG = (2, 3, 4, 5)

CASES: dict = {
    "Clip": ("clip_param { min: 0.3 max: 0.8 }", [IMG], 1),
    "Swish": ("swish_param { beta: 1.5 }", [IMG], 1),
    "ReLU6": ("", [IMG], 1),
    "Embed": ("embed_param { num_output: 3 input_dim: 4 }", [(2, 3)], 1),
    "Tile": ("tile_param { axis: 2 tiles: 3 }", [IMG], 1),
    "Reduction": ("reduction_param { operation: MEAN axis: 1 coeff: 2 }", [IMG], 1),
    "BatchReindex": ("", [(5, 3, 2, 2), (4,)], 1),
    "Filter": ("", [IMG, (2, 6), (2,)], 2),
    "Parameter": ("parameter_param { shape { dim: 2 dim: 3 } }", [], 1),
}
