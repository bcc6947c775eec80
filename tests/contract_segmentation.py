"""Contract cases (see tests/test_converter_contract.py) of DeepLab's test-time layers (converters/segmentation.py):
type -> (extra LayerParameter text, bottom shapes, number of tops). The contract's inputs lie in [0.1, 1.1), so
SegAccuracy's labels truncate to 0 or 1."""
import os
import tempfile

CASES: dict = {
    "SegAccuracy": ("seg_accuracy_param { ignore_label: 255 }", [(2, 3, 4, 5), (2, 1, 4, 5)], 1),
    "Padding": ("padding_param { pad_beg: -1 pad_end: -2 }", [(2, 3, 6, 7)], 1),
    "MatWrite": (f'mat_write_param {{ prefix: "{os.path.join(tempfile.gettempdir(), "sfport_contract_")}" }}',
                 [(2, 3, 4, 5)], 0),
}
