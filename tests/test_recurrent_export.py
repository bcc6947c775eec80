"""Recurrent nets (RNN, LSTM, LSTMUnit) exported to ONNX (run on onnxruntime) and TorchScript, against the numpy
float64 evaluation of Caffe's formulas of tests/test_recurrent.py (recurrent_layer.cpp Reshape / Forward_cpu,
lstm_layer.cpp / rnn_layer.cpp FillUnrolledNet, lstm_unit_layer.cpp Forward_cpu), and an LRCN-style net against the
oracle pycaffe: the time axis T dynamic (RecurrentLayer::LayerSetUp unrolls the net for the bottom's T and Reshape
then refuses another; the weights do not depend on T, so the export runs at any T as the net set up at that T: a
loop, ONNX Loop) or fixed (--static: unrolled),
the batch N on axis 1 (T x N x ...), cont restarting sequences, the static input, expose_hidden's h_0/c_0 bottoms
and h_T/c_T tops. The exported graph starts from the zero state (Caffe's first forward, or after Reset)."""
import io
import os
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sfport.formats import caffe_files
from sfport.netdef import weight_match
from sfport.runtime import export
from sfport.runtime.net import Net

from netcases import layer
from test_recurrent import T, N, D, assert_parity, build, blobs_of, cont_with_restarts, data, recurrent, \
    ref_lstm, ref_lstm_unit, ref_rnn


ORACLE = os.environ.get("SFPORT_ORACLE_PYTHON", "/tmp/oracle/venv/bin/python")


def _ort(data_):
    return ort.InferenceSession(data_, providers=["CPUExecutionProvider"])


def _ts(data_):
    return torch.jit.load(io.BytesIO(data_))


CASES = {   # name: (type, inputs, tops, extra)
    "lstm": ("LSTM", {"x": (T, N, 6), "cont": (T, N)}, ["h"], ""),
    "lstm_static_hidden": ("LSTM", {"x": (T, N, 3, 2), "cont": (T, N), "xs": (N, 5), "h0": (1, N, D),
                                    "c0": (1, N, D)}, ["h", "hT", "cT"], "expose_hidden: true"),
    "rnn": ("RNN", {"x": (T, N, 6), "cont": (T, N)}, ["o"], ""),
    "rnn_static_hidden": ("RNN", {"x": (T, N, 6), "cont": (T, N), "xs": (N, 2, 2), "h0": (1, N, D)},
                          ["o", "hT"], "expose_hidden: true"),
}


def _reference(type_, w, feed):
    """Caffe's formulas in numpy float64, from the first forward (zero state, or the given h_0 / c_0)."""
    blobs = blobs_of(w)
    static = "xs" in feed
    if type_ == "LSTM":
        W_xc, b_c = blobs[:2]
        W_xc_static, W_hc = (blobs[2], blobs[3]) if static else (None, blobs[2])
        out = ref_lstm(feed["x"], feed["cont"], W_xc, b_c, W_hc, W_xc_static, feed.get("xs"), feed.get("h0"),
                       feed.get("c0"))
        return out if "h0" in feed else out[:1]
    W_xh, b_h = blobs[:2]
    W_xh_static, (W_hh, W_ho, b_o) = (blobs[2], blobs[3:]) if static else (None, blobs[2:])
    out = ref_rnn(feed["x"], feed["cont"], W_xh, b_h, W_hh, W_ho, b_o, W_xh_static, feed.get("xs"), feed.get("h0"))
    return out if "h0" in feed else out[:1]


def _feed(inputs, t_, n_, seed):
    """Inputs at T = t_, N = n_ (x, cont T x N; xs N x ...; h0, c0 1 x N x D), cont with restarts and, where
    h_0 is given, streams that continue from it."""
    shapes = {k: ((t_, n_) + s[2:] if k in ("x", "cont") else (n_,) + s[1:] if k == "xs" else (1, n_, D))
              for k, s in inputs.items()}
    feed = dict(zip(shapes, data(seed, *shapes.values())))
    feed["cont"] = cont_with_restarts(t_, n_)
    feed["cont"][0, 1::2] = 1                      # odd streams continue from h_0 (zero without expose_hidden)
    return feed


@pytest.mark.parametrize("case", list(CASES))
def test_exports_with_dynamic_time_and_batch_match_caffes_formulas(tmp_path, case):
    type_, inputs, tops, extra = CASES[case]
    net, w = build(tmp_path, inputs, recurrent(type_, list(inputs), tops, extra), scale=2.0, name=case)
    on, r_on = export.onnx_export(net)
    ts, r_ts = export.torchscript_export(net)
    for r in (r_on, r_ts):
        assert r.worst <= 1e-5
        assert [lab.split(":")[0] for lab, _ in r.checked if lab.startswith("T=")] == [f"T={T + 3}", "T=1"]
        assert any("time axis T" in n and "dynamic" in n for n in r.notes)
        assert any("without the state Caffe carries" in n for n in r.notes) == ("h0" not in inputs)
    model = onnx.load_from_string(on)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in list(model.graph.input) + list(model.graph.output)}
    assert dims["x"][:2] == ["time", "batch"] and dims["cont"] == ["time", "batch"]
    assert dims[tops[0]][:2] == ["time", "batch"]
    for k in ("xs",):
        if k in inputs:
            assert dims[k][0] == "batch"
    for k in ["h0", "c0"][:len(tops) - 1] + tops[1:]:
        assert dims[k][:2] == [1, "batch"]
    assert "Loop" in {n.op_type for n in model.graph.node}
    sess, loaded = _ort(on), _ts(ts)
    errors = {}
    for t_, n_ in [(T, N), (9, 4), (1, 1), (2, 5)]:
        feed = _feed(inputs, t_, n_, seed=t_ * 10 + n_)
        want = _reference(type_, w, feed)
        got_on = sess.run(tops, feed)
        with torch.no_grad():
            got_ts = [t.numpy() for t in loaded(*[torch.from_numpy(feed[k]) for k in inputs])]
        for g_on, g_ts, r in zip(got_on, got_ts, want):
            assert_parity(g_on, r)
            assert_parity(g_ts, r)
        errors[(t_, n_)] = max(float(np.abs(g - r).max()) for g, r in zip(got_on, want))
    print(case, "ONNX max abs error vs numpy by (T, N):", errors)


@pytest.mark.parametrize("type_,top", [("LSTM", "h"), ("RNN", "o")])
def test_static_export_unrolls_the_loop_at_the_stated_T(tmp_path, type_, top):
    inputs = {"x": (T, N, 6), "cont": (T, N)}
    net, w = build(tmp_path, inputs, recurrent(type_, list(inputs), [top]), scale=2.0, name=type_)
    on, r = export.onnx_export(net, dynamic=False)
    ts, r_ts = export.torchscript_export(net, dynamic=False)
    assert not [lab for lab, _ in r.checked if lab.startswith("T=")]
    assert any(f"fixed at {T}" in n and "unrolled" in n for n in r.notes)
    model = onnx.load_from_string(on)
    assert "Loop" not in {n.op_type for n in model.graph.node}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [T, "batch", 6]
    feed = _feed(inputs, T, 4, seed=1)
    want = _reference(type_, w, feed)[0]
    assert_parity(_ort(on).run([top], feed)[0], want)
    with torch.no_grad():
        assert_parity(_ts(ts)(torch.from_numpy(feed["x"]), torch.from_numpy(feed["cont"]))[0].numpy(), want)


def test_export_leaves_the_carried_state_alone(tmp_path):
    """Export and its checks run the zero-state form; the Net keeps Caffe's carried state as before."""
    inputs = {"x": (T, N, 6), "cont": (T, N)}
    net, w = build(tmp_path, inputs, recurrent("LSTM", list(inputs), ["h"]), scale=2.0)
    feed = _feed(inputs, T, N, seed=3)
    feed["cont"][0] = 1
    first = net.forward(**feed)["h"].numpy()
    export.onnx_export(net)
    second = net.forward(**feed)["h"].numpy()      # continues from the first forward's h_T, c_T
    blobs = blobs_of(w)
    assert_parity(first, ref_lstm(feed["x"], feed["cont"], *blobs)[0])
    _, h_T, c_T = ref_lstm(feed["x"], feed["cont"], *blobs)
    assert_parity(second, ref_lstm(feed["x"], feed["cont"], *blobs, h0=h_T, c0=c_T)[0])


def test_lstm_unit_exports_with_the_batch_on_axis_1(tmp_path):
    inputs = {"c_prev": (1, N, D), "gates": (1, N, 4 * D), "cont": (1, N)}
    net, _ = build(tmp_path, inputs, layer("t", "LSTMUnit", list(inputs), ["c", "h"]))
    on, r = export.onnx_export(net)
    assert r.worst <= 1e-5 and r.axes["c_prev"] == {1: "batch"} and r.axes["c"] == {1: "batch"}
    ts, _ = export.torchscript_export(net)
    c_prev, gates = data(9, (1, 6, D), (1, 6, 4 * D))
    gates *= 3
    cont = np.array([[1, 0, 1, 1, 0, 1]], np.float32)
    c, h = ref_lstm_unit(c_prev[0].astype(np.float64), gates[0].astype(np.float64), cont[0])
    got = _ort(on).run(["c", "h"], {"c_prev": c_prev, "gates": gates, "cont": cont})
    with torch.no_grad():
        got_ts = _ts(ts)(*(torch.from_numpy(a) for a in (c_prev, gates, cont)))
    for g, g_ts, ref in zip(got, got_ts, (c, h)):
        assert_parity(g, ref[None])
        assert_parity(g_ts.numpy(), ref[None])


LRCN = """name: "lrcn"
layer { name: "input" type: "Input" top: "words" top: "cont" top: "img"
        input_param { shape { dim: %d dim: %d } shape { dim: %d dim: %d } shape { dim: %d dim: 5 } } }
layer { name: "emb" type: "Embed" bottom: "words" top: "we"
        embed_param { num_output: 4 input_dim: 10 bias_term: false weight_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "t" type: "LSTM" bottom: "we" bottom: "cont" bottom: "img" top: "h"
        recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.8 max: 0.8 }
                          bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 axis: 2 weight_filler { type: "uniform" min: -1 max: 1 } } }
"""

ORACLE_SCRIPT = """
import sys, numpy as np, caffe
caffe.set_mode_cpu()
folder = sys.argv[1]
for t in sys.argv[2:]:
    net = caffe.Net(f"{folder}/lrcn{t}.prototxt", f"{folder}/lrcn.caffemodel", caffe.TEST)
    d = np.load(f"{folder}/in{t}.npz")
    for k in ("words", "cont", "img"):
        net.blobs[k].data[...] = d[k]
    net.forward()
    np.save(f"{folder}/y{t}.npy", net.blobs["y"].data)
"""


@pytest.mark.skipif(not os.path.exists(ORACLE), reason="the oracle pycaffe is not built")
def test_lrcn_style_net_exported_once_is_pycaffe_set_up_at_each_length(tmp_path):
    """An Embed (words T x N) before an LSTM with a static input (the image, N x 5), then InnerProduct axis 2:
    exported once at T = 6, N = 2; the ONNX file at (T, N) = (6, 3) and (9, 3) against the oracle pycaffe with a
    net set up at each T (recurrent_layer.cpp Reshape refuses another T in a net once set up: "input number of
    timesteps changed"; the weights do not depend on T)."""
    for t, n in [(6, 2), (6, 3), (9, 3)]:
        (tmp_path / f"lrcn{t}{'' if n == 3 else '_own'}.prototxt").write_text(LRCN % (t, n, t, n, n))
    m = weight_match.with_random_weights(caffe_files.read_prototxt(tmp_path / "lrcn6_own.prototxt"), seed=1)
    caffe_files.write_caffemodel(tmp_path / "lrcn.caffemodel", m)
    net = Net(str(tmp_path / "lrcn6_own.prototxt"), str(tmp_path / "lrcn.caffemodel"))
    on, r = export.onnx_export(net)
    assert r.axes["words"] == {0: "time", 1: "batch"} and r.axes["img"] == {0: "batch"}
    rng = np.random.default_rng(0)
    feeds = {}
    for t in (6, 9):
        cont = np.ones((t, 3), np.float32)
        cont[0] = 0
        cont[t // 2, 1] = 0
        feeds[t] = {"words": rng.integers(0, 10, (t, 3)).astype(np.float32), "cont": cont,
                    "img": rng.uniform(-1, 1, (3, 5)).astype(np.float32)}
        np.savez(tmp_path / f"in{t}.npz", **feeds[t])
    subprocess.run([ORACLE, "-c", ORACLE_SCRIPT, str(tmp_path), "6", "9"], check=True, capture_output=True,
                   timeout=300)
    sess = _ort(on)
    for t in (6, 9):
        assert_parity(sess.run(["y"], feeds[t])[0], np.load(tmp_path / f"y{t}.npy"))
