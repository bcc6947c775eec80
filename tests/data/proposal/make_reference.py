"""The reference data of tests/test_proposal.py: region proposals as their authors' code computes them, one case per
.npz file of this folder (how and why: README.md).

Run from the repository root with the main environment's Python (numpy, PyYAML)::

    python tests/data/proposal/make_reference.py PY_FASTER_RCNN_SRC [ORACLE_PYTHON]

PY_FASTER_RCNN_SRC: a checkout of rbgirshick/py-faster-rcnn (781a917b, the fixtures' commit). Its ProposalLayer runs
as it is written (lib/rpn/proposal_layer.py, generate_anchors.py, fast_rcnn/bbox_transform.py, fast_rcnn/config.py
for cfg), each file put through lib2to3 (Python 2 print statements and xrange) into a temporary folder; what it
imports from outside is given here: a ``caffe`` module with the ``Layer`` base class, ``easydict`` (config.py's
EasyDict: a dict with attribute access), ``fast_rcnn.nms_wrapper.nms`` as the repository's own lib/nms/py_cpu_nms.py
(nms_wrapper dispatches to the Cython cpu_nms or the CUDA gpu_nms; py_cpu_nms computes the same float32 IoU and
suppresses at the same threshold, keeping ``IoU <= 0.7`` where cpu_nms drops ``IoU >= 0.7``) and ``yaml.load``
with PyYAML's FullLoader (the 2016 default loader, which reads ``!!python/tuple``). The scores are drawn distinct:
the order numpy's unstable argsort gives equal scores is not defined.

ORACLE_PYTHON (default /tmp/oracle/venv/bin/python): the oracle pycaffe of ../shared/tools/build-caffe-oracle.sh,
whose fork (brocolli-caffe 9.0.2) registers the C++ Proposal layer; each case runs in a subprocess of it.
"""
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _random_case(rng, n, a, h, w, delta_std, distinct=True, quantize=None):
    """Two-class softmax scores (background ``1 - p``, then foreground ``p`` channels; the foreground scores all
    distinct, or in eighths: ties), Gaussian deltas in 256ths (float16 holds them exactly: the files store the
    foreground scores and the deltas, :func:`inputs` makes the bottoms again)."""
    count = n * a * h * w
    if distinct:
        fg = ((rng.permutation(count) + rng.random(count) * 0.5 + 0.25) / count).astype(np.float32)
        assert len(np.unique(fg)) == count
    else:
        fg = (np.round(rng.random(count) * quantize) / quantize).astype(np.float32)
    fg = fg.reshape(n, a, h, w)
    scores = np.concatenate([np.float32(1) - fg, fg], axis=1)
    deltas = (np.round(rng.standard_normal((n, 4 * a, h, w)) * delta_std * 256) / 256).astype(np.float16)
    assert np.abs(deltas).max() < 8
    return scores, deltas.astype(np.float32)


def inputs(case) -> tuple:
    """(scores, deltas, im_info) of a stored case, as they were fed."""
    fg = case["fg"]
    return np.concatenate([np.float32(1) - fg, fg], axis=1), case["deltas"].astype(np.float32), case["im_info"]


def _stored(scores, deltas) -> dict:
    a = scores.shape[1] // 2
    return {"fg": scores[:, a:], "deltas": deltas.astype(np.float16)}


# ------------------------------------------------------------------------------ py-faster-rcnn's ProposalLayer

PY_CASES = [
    # name, param_str, (h, w), im_info, delta std, seed
    ("py_vgg16_416x512", "'feat_stride': 16", (26, 32), [416, 512, 1.0], 0.2, 1),
    ("py_small_map", "'feat_stride': 16", (14, 14), [224, 224, 1.0], 0.3, 2),
    ("py_scale_filter", "'feat_stride': 16", (20, 24), [320, 384, 1.6], 1.2, 3),
    ("py_scales_tuple", "'feat_stride': 16\n'scales': !!python/tuple [4, 8, 16, 32]", (16, 20), [256, 320, 1.0],
     0.4, 4),
    ("py_flow_map", "{'feat_stride': 8, 'scales': [2, 4]}", (12, 9), [96, 72, 0.5], 0.3, 5),
]


def _upstream(src: str, tmp: str):
    """py-faster-rcnn's ProposalLayer class, its files through lib2to3, the rest as the module says."""
    import warnings
    warnings.simplefilter("ignore")
    from lib2to3 import refactor
    import yaml
    tool = refactor.RefactoringTool(refactor.get_fixers_from_package("lib2to3.fixes"))
    for pkg, files in {"rpn": ["proposal_layer.py", "generate_anchors.py"],
                       "fast_rcnn": ["bbox_transform.py", "config.py"], "nms": ["py_cpu_nms.py"]}.items():
        os.makedirs(os.path.join(tmp, pkg), exist_ok=True)
        open(os.path.join(tmp, pkg, "__init__.py"), "w").close()
        for f in files:
            text = open(os.path.join(src, "lib", pkg, f)).read()
            out = str(tool.refactor_string(text + "\n", f))
            if f == "proposal_layer.py":   # Python 3's import is absolute: the sibling module by its package
                out = out.replace("from generate_anchors import", "from rpn.generate_anchors import")
            open(os.path.join(tmp, pkg, f), "w").write(out)
    open(os.path.join(tmp, "fast_rcnn", "nms_wrapper.py"), "w").write("from nms.py_cpu_nms import py_cpu_nms as nms\n")
    caffe = types.ModuleType("caffe")
    caffe.Layer = type("Layer", (), {})
    easydict = types.ModuleType("easydict")

    class EasyDict(dict):
        __getattr__ = dict.__getitem__

        def __setattr__(self, k, v):
            self[k] = v
    easydict.EasyDict = EasyDict
    fake_yaml = types.ModuleType("yaml")
    fake_yaml.load = lambda text: yaml.load(text, Loader=yaml.FullLoader)
    sys.modules.update(caffe=caffe, easydict=easydict, yaml=fake_yaml)
    sys.path.insert(0, tmp)
    from rpn.proposal_layer import ProposalLayer
    return ProposalLayer


class _Blob:
    def __init__(self, data=None):
        self.data = data

    def reshape(self, *shape):
        self.data = np.zeros(shape, dtype=np.float32)


def make_py(src: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ProposalLayer = _upstream(src, tmp)
        for name, param_str, (h, w), info, std, seed in PY_CASES:
            layer = ProposalLayer()
            layer.param_str_ = layer.param_str = param_str
            layer.phase = "TEST"
            top = [_Blob(), _Blob()]
            layer.setup([], top)
            rng = np.random.default_rng(seed)
            scores, deltas = _random_case(rng, 1, layer._num_anchors, h, w, std)
            im_info = np.array([info], dtype=np.float32)
            layer.forward([_Blob(scores), _Blob(deltas), _Blob(im_info)], top)
            np.savez_compressed(os.path.join(HERE, name + ".npz"), param_str=np.array(param_str),
                                **_stored(scores, deltas), im_info=im_info, rois=top[0].data, roi_scores=top[1].data)
            print(name, top[0].data.shape)


# ------------------------------------------------------------------------------ the oracle fork's C++ Proposal

CPP_CASES = [
    # name, proposal_param, batch, anchors, (h, w), im_info, delta std, seed, distinct scores
    ("cpp_pixel_scales", "ratio: 0.5 ratio: 1 ratio: 2 scale: 128 scale: 256 scale: 512", 1, 9, (24, 30),
     [384, 480, 1], 0.3, 11, True),
    ("cpp_topn", "ratio: 0.5 ratio: 1 ratio: 2 scale: 128 scale: 256 scale: 512 pre_nms_topn: 500 "
                 "post_nms_topn: 100", 1, 9, (16, 20), [256, 320, 1], 0.3, 12, True),
    # py-faster-rcnn's scales: the fork's anchors are then 8 to 32 pixels, most boxes too small (score 0, kept)
    ("cpp_small_anchors", "ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32", 1, 9, (20, 20),
     [320, 320, 1], 0.3, 13, True),
    # two images (im_info's first row for both), scores in eighths: ties everywhere, ordered by sort_box
    ("cpp_batch_ties", "ratio: 1 scale: 16 scale: 32 min_size: 40 nms_thresh: 0.5", 2, 2, (12, 10),
     [200, 170, 2], 0.3, 14, False),
    ("cpp_all_proposals", "ratio: 0.5 ratio: 1 ratio: 2 scale: 128 scale: 256 scale: 512 feat_stride: 8 "
                          "base_size: 8 min_size: 4", 1, 9, (6, 7), [48, 56, 1], 0.5, 15, True),
]

_ORACLE = r"""
import sys, numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net(sys.argv[1], caffe.TEST)
d = np.load(sys.argv[2])
for k in ("scores", "deltas", "im_info"):
    net.blobs[k].reshape(*d[k].shape)
    net.blobs[k].data[...] = d[k]
net.reshape()
net.forward()
np.savez(sys.argv[3], rois=net.blobs["rois"].data, roi_scores=net.blobs["roi_scores"].data)
"""


def make_cpp(python: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, param, n, a, (h, w), info, std, seed, distinct in CPP_CASES:
            rng = np.random.default_rng(seed)
            scores, deltas = _random_case(rng, n, a, h, w, std, distinct, None if distinct else 8)
            im_info = np.array([info], dtype=np.float32)
            shapes = {"scores": scores.shape, "deltas": deltas.shape, "im_info": im_info.shape}
            text = "".join(f'input: "{k}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n'
                           for k, s in shapes.items())
            text += ('layer { name: "proposal" type: "Proposal" bottom: "scores" bottom: "deltas" '
                     f'bottom: "im_info" top: "rois" top: "roi_scores" proposal_param {{ {param} }} }}\n')
            proto, inp, out = (os.path.join(tmp, f) for f in ("p.prototxt", "in.npz", "out.npz"))
            open(proto, "w").write(text)
            np.savez(inp, scores=scores, deltas=deltas, im_info=im_info)
            subprocess.run([python, "-c", _ORACLE, proto, inp, out], check=True, capture_output=True)
            ref = np.load(out)
            np.savez_compressed(os.path.join(HERE, name + ".npz"), proposal_param=np.array(param),
                                **_stored(scores, deltas), im_info=im_info, rois=ref["rois"],
                                roi_scores=ref["roi_scores"])
            print(name, ref["rois"].shape)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    make_cpp(sys.argv[2] if len(sys.argv) > 2 else "/tmp/oracle/venv/bin/python")
    make_py(sys.argv[1])
