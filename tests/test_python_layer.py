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


MODULE = '''
import caffe


class Double(caffe.Layer):
    def setup(self, bottom, top):
        self.k = float(self.param_str or 2)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.k * top[0].diff
'''


def test_python_layers_run_on_the_command_line_only_when_asked(tmp_path, monkeypatch):
    """`sfport --python-layers` imports python_param's module (the working directory) and runs the layer: its
    forward in the converted net, its backward inside autograd; without the flag the one line names the flag."""
    import numpy as np
    import torch
    import sfport
    from sfport.pycaffe import importer
    importer.install(shadow=True)
    (tmp_path / "mylayers.py").write_text(MODULE)
    p = tmp_path / "n.prototxt"
    p.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                 'layer { name: "d" type: "Python" bottom: "x" top: "y" '
                 'python_param { module: "mylayers" layer: "Double" param_str: "3" } }\n')
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["convert", str(p), "-o", "n.pt"])
    assert r.exit_code == 2 and "--python-layers" in r.stderr and not (tmp_path / "n.pt").exists()
    from sfport.pycaffe import pylayers
    try:
        r = CliRunner().invoke(cli, ["--python-layers", "convert", str(p), "-o", "n.pt"])
        assert r.exit_code == 0, r.output
        net = sfport.TorchNet(str(p))
    finally:
        pylayers.disable()
    x = torch.randn(2, 3, requires_grad=True)
    y = net.module(x=x)["y"]
    assert torch.equal(y, 3 * x.detach())
    y.sum().backward()
    assert np.array_equal(x.grad.numpy(), np.full((2, 3), 3, np.float32))
