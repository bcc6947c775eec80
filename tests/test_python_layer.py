"""A Python layer, whose code sfport never imports from a model file, says how to register a converter for it."""
from click.testing import CliRunner

from sfport.cli import cli

def test_a_python_layer_says_how_to_register_a_converter(tmp_path):
    p = tmp_path / "proposal.prototxt"
    p.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
                 'layer { name: "prop" type: "Python" bottom: "x" top: "y" '
                 'python_param { module: "rpn.proposal" layer: "ProposalLayer" } }\n')
    r = CliRunner().invoke(cli, ["convert", str(p), "-o", str(tmp_path / "p.pt")])
    assert r.exit_code == 2 and r.stdout == "" and not (tmp_path / "p.pt").exists()
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sfport: error: {p}: layer 'prop' is a Python layer"), r.stderr
    assert "@sfport.converters.register('Python')" in lines[0] and "SFPORT_CONVERTERS" in lines[0]
