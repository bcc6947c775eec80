"""Contract cases (see tests/test_converter_contract.py) of the file-writing layers."""
import os
import tempfile

CASES: dict = {
    "HDF5Output": (f'hdf5_output_param {{ file_name: "{os.path.join(tempfile.gettempdir(), "sfport_contract.h5")}" }}',
                   [(4, 6), (4,)], 0),
}
