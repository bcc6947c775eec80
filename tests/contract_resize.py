"""Contract cases (see tests/test_converter_contract.py) of the resize converters: type -> (extra LayerParameter
text, bottom shapes, number of tops)."""

CASES: dict = {}
