"""Contract cases (see tests/test_converter_contract.py) of the losses converters: type -> (extra LayerParameter
text, bottom shapes, number of tops)."""

CASES: dict = {
    "EuclideanLoss": ("", [(4, 5), (4, 5)], 1),
    "SigmoidCrossEntropyLoss": ("", [(4, 5), (4, 5)], 1),
    "ContrastiveLoss": ("", [(4, 5), (4, 5), (4,)], 1),
    "HingeLoss": ("", [(4, 5), (4,)], 1),
    "MultinomialLogisticLoss": ("", [(4, 5), (4,)], 1),
    "InfogainLoss": ("", [(4, 5), (4,), (5, 5)], 2),
}
