"""RNN, LSTM and LSTMUnit (converters/recurrent.py) against an independent numpy float64 evaluation of Caffe's
formulas (recurrent_layer.cpp, rnn_layer.cpp / lstm_layer.cpp FillUnrolledNet, lstm_unit_layer.cpp), written out
here as the unrolled loop over t with cont; their gradients against finite differences (gradcheck, float64) and
LSTMUnit's against Caffe's Backward_cpu formulas; Caffe's blob order, shapes and fillers; a caffemodel round trip.

OpenCV 4's Caffe importer (4.14) does not implement Caffe's recurrent layers: it has
no "RNN" type, and its "LSTM" reads the blobs as (Wh, Wx, b, h0, c0), not Caffe's (W_xc, b_c, W_hc), takes no
cont bottom, so only the numpy reference is the judge here."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from sfport import converters
from sfport.formats import caffe_files
from sfport.netdef import weight_match, shapes
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net
from sfport.protos import caffe_pb2

from netcases import layer

T, N, D = 5, 3, 4


def assert_parity(actual, ref):
    """The project's fp32 criterion: max |actual - ref| <= 1e-5 * max(1, max |ref|)."""
    actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
    assert actual.shape == ref.shape, (actual.shape, ref.shape)
    err, scale = float(np.abs(actual - ref).max()), max(1.0, float(np.abs(ref).max()))
    assert err <= 1e-5 * scale, f"max abs error {err:.3e} over 1e-5 * {scale:.3g}"


# ---- the numpy float64 reference, from Caffe's .cpp ------------------------------------------------------------

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_lstm_unit(c_prev, x, cont):
    """LSTMUnitLayer::Forward_cpu, loop over n and d (c_prev N x D, x N x 4D, cont N)."""
    n_, d_ = c_prev.shape
    c, h = np.zeros((n_, d_)), np.zeros((n_, d_))
    for n in range(n_):
        for d in range(d_):
            i = sigmoid(x[n, d])
            f = 0.0 if cont[n] == 0 else cont[n] * sigmoid(x[n, d_ + d])
            o = sigmoid(x[n, 2 * d_ + d])
            g = np.tanh(x[n, 3 * d_ + d])
            c[n, d] = f * c_prev[n, d] + i * g
            h[n, d] = o * np.tanh(c[n, d])
    return c, h


def ref_lstm_unit_backward(c_prev, x, cont, dc, dh):
    """LSTMUnitLayer::Backward_cpu: (diff of c_prev, diff of x) for top diffs dc, dh (f holds cont * sigmoid)."""
    d_ = c_prev.shape[1]
    i, o, g = sigmoid(x[:, :d_]), sigmoid(x[:, 2 * d_:3 * d_]), np.tanh(x[:, 3 * d_:])
    f = np.where(cont[:, None] == 0, 0.0, cont[:, None] * sigmoid(x[:, d_:2 * d_]))
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    c_term = dc + dh * o * (1 - tanh_c * tanh_c)
    dx = np.concatenate([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f), dh * tanh_c * o * (1 - o),
                         c_term * i * (1 - g * g)], axis=1)
    return c_term * f, dx


def ref_lstm(x, cont, W_xc, b_c, W_hc, W_xc_static=None, x_static=None, h0=None, c0=None):
    """LSTMLayer's unrolled net: (h: T x N x D, h_T, c_T)."""
    t_, n_ = x.shape[:2]
    d_ = W_hc.shape[1]
    x = x.reshape(t_, n_, -1).astype(np.float64)
    W_xc_x = x @ W_xc.T + b_c                                                    # x_transform
    static = 0.0 if x_static is None else x_static.reshape(n_, -1) @ W_xc_static.T  # W_xc_x_static
    h = np.zeros((n_, d_)) if h0 is None else h0[0].astype(np.float64)
    c = np.zeros((n_, d_)) if c0 is None else c0[0].astype(np.float64)
    hs = []
    for t in range(t_):
        h_conted = cont[t][:, None] * h                                          # h_conted_{t-1} (Scale)
        gate_input = h_conted @ W_hc.T + W_xc_x[t] + static                      # gate_input_t (Eltwise SUM)
        c, h = ref_lstm_unit(c, gate_input, cont[t])                             # unit_t
        hs.append(h)
    return np.stack(hs), h[None], c[None]


def ref_rnn(x, cont, W_xh, b_h, W_hh, W_ho, b_o, W_xh_static=None, x_static=None, h0=None):
    """RNNLayer's unrolled net: (o: T x N x D, h_T)."""
    t_, n_ = x.shape[:2]
    d_ = W_hh.shape[1]
    x = x.reshape(t_, n_, -1).astype(np.float64)
    W_xh_x = x @ W_xh.T + b_h
    static = 0.0 if x_static is None else x_static.reshape(n_, -1) @ W_xh_static.T
    h = np.zeros((n_, d_)) if h0 is None else h0[0].astype(np.float64)
    os_ = []
    for t in range(t_):
        h_conted = cont[t][:, None] * h
        h = np.tanh(h_conted @ W_hh.T + W_xh_x[t] + static)                      # h_neuron_t
        os_.append(np.tanh(h @ W_ho.T + b_o))                                    # o_neuron_t
    return np.stack(os_), h[None]


# ---- nets ------------------------------------------------------------------------------------------------------

def net_text(inputs: dict, body: str, name="rec") -> str:
    tops = " ".join(f'top: "{k}"' for k in inputs)
    shapes_ = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in inputs.values())
    return f'name: "{name}"\nlayer {{ name: "input" type: "Input" {tops} input_param {{ {shapes_} }} }}\n{body}\n'


def build(tmp_path, inputs: dict, body: str, seed=3, weights=None, name="rec", scale=1.0):
    """Write prototxt + caffemodel (sfport's random weights times ``scale``, or the given {layer: [arrays]}),
    return (net, caffemodel path)."""
    p = tmp_path / f"{name}.prototxt"
    p.write_text(net_text(inputs, body, name))
    m = weight_match.with_random_weights(caffe_files.read_prototxt(p), seed=seed)
    for i, lay in enumerate(m.net.layer):
        if weights and lay.name in weights:
            m.set_blob_arrays(i, weights[lay.name])
        elif scale != 1.0 and m.blob_arrays(i):
            m.set_blob_arrays(i, [(a * scale).astype(np.float32) for a in m.blob_arrays(i)])
    w = tmp_path / f"{name}.caffemodel"
    caffe_files.write_caffemodel(w, m)
    return Net(str(p), str(w)), str(w)


def blobs_of(w, name="t"):
    return [np.asarray(a, np.float64) for a in caffe_files.read_caffemodel(w).params[name]]


def cont_with_restarts(t_=T, n_=N):
    """0 at t = 0 (a new sequence), and a restart in the middle of stream 0 and of the last stream."""
    cont = np.ones((t_, n_), np.float32)
    cont[0] = 0
    cont[t_ // 2, 0] = 0
    cont[t_ - 1, n_ - 1] = 0
    return cont


def data(seed, *shape_list):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, s).astype(np.float32) for s in shape_list]


def recurrent(type_, bottoms, tops, extra=""):
    return layer("t", type_, bottoms, tops, f"recurrent_param {{ num_output: {D} {extra} }}")


# ---- forward against numpy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape", [(T, N, 6), (T, N, 3, 2)])
def test_lstm_matches_numpy(tmp_path, x_shape):
    net, w = build(tmp_path, {"x": x_shape, "cont": (T, N)}, recurrent("LSTM", ["x", "cont"], ["h"]), scale=2.0)
    x, = data(0, x_shape)
    cont = cont_with_restarts()
    out = net.forward(x=x, cont=cont)["h"].numpy()
    W_xc, b_c, W_hc = blobs_of(w)
    assert W_xc.shape == (4 * D, 6) and b_c.shape == (4 * D,) and W_hc.shape == (4 * D, D)
    assert_parity(out, ref_lstm(x, cont, W_xc, b_c, W_hc)[0])


def test_lstm_static_input_and_expose_hidden(tmp_path):
    inputs = {"x": (T, N, 3), "cont": (T, N), "xs": (N, 2, 3), "h0": (1, N, D), "c0": (1, N, D)}
    body = recurrent("LSTM", list(inputs), ["h", "hT", "cT"], "expose_hidden: true")
    net, w = build(tmp_path, inputs, body, scale=2.0)
    x, xs, h0, c0 = data(1, (T, N, 3), (N, 2, 3), (1, N, D), (1, N, D))
    cont = cont_with_restarts()
    cont[0, 1] = 1                       # stream 1 continues from the given h0, c0
    outs = net.forward(x=x, cont=cont, xs=xs, h0=h0, c0=c0)
    W_xc, b_c, W_xc_static, W_hc = blobs_of(w)
    assert W_xc_static.shape == (4 * D, 6)
    ref = ref_lstm(x, cont, W_xc, b_c, W_hc, W_xc_static, xs, h0, c0)
    for name, r in zip(["h", "hT", "cT"], ref):
        assert_parity(outs[name].numpy(), r)
    # the given state matters exactly where cont_0 = 1
    fresh = ref_lstm(x, cont * (np.arange(T)[:, None] > 0), W_xc, b_c, W_hc, W_xc_static, xs)[0]
    assert np.abs(fresh[:, 1] - ref[0][:, 1]).max() > 1e-3
    assert_parity(outs["h"].numpy()[:, 0], fresh[:, 0])


def test_rnn_matches_numpy(tmp_path):
    net, w = build(tmp_path, {"x": (T, N, 6), "cont": (T, N)}, recurrent("RNN", ["x", "cont"], ["o"]), scale=2.0)
    x, = data(2, (T, N, 6))
    cont = cont_with_restarts()
    out = net.forward(x=x, cont=cont)["o"].numpy()
    bl = blobs_of(w)
    assert [b.shape for b in bl] == [(D, 6), (D,), (D, D), (D, D), (D,)]   # W_xh, b_h, W_hh, W_ho, b_o
    assert_parity(out, ref_rnn(x, cont, *bl)[0])


def test_rnn_static_input_and_expose_hidden(tmp_path):
    inputs = {"x": (T, N, 6), "cont": (T, N), "xs": (N, 5), "h0": (1, N, D)}
    net, w = build(tmp_path, inputs, recurrent("RNN", list(inputs), ["o", "hT"], "expose_hidden: true"), scale=2.0)
    x, xs, h0 = data(3, (T, N, 6), (N, 5), (1, N, D))
    cont = cont_with_restarts()
    cont[0, :2] = 1
    outs = net.forward(x=x, cont=cont, xs=xs, h0=h0)
    W_xh, b_h, W_xh_static, W_hh, W_ho, b_o = blobs_of(w)
    assert W_xh_static.shape == (D, 5)
    o, h_T = ref_rnn(x, cont, W_xh, b_h, W_hh, W_ho, b_o, W_xh_static, xs, h0)
    assert_parity(outs["o"].numpy(), o)
    assert_parity(outs["hT"].numpy(), h_T)


def test_lstm_unit_layer_matches_numpy(tmp_path):
    inputs = {"c_prev": (1, N, D), "gates": (1, N, 4 * D), "cont": (1, N)}
    net, _ = build(tmp_path, inputs, layer("t", "LSTMUnit", list(inputs), ["c", "h"]))
    c_prev, gates = data(4, (1, N, D), (1, N, 4 * D))
    gates *= 3
    cont = np.array([[1, 0, 1]], np.float32)
    outs = net.forward(c_prev=c_prev, gates=gates, cont=cont)
    c, h = ref_lstm_unit(c_prev[0].astype(np.float64), gates[0].astype(np.float64), cont[0])
    assert_parity(outs["c"].numpy(), c[None])
    assert_parity(outs["h"].numpy(), h[None])
    assert_parity(outs["c"].numpy()[0, 1], (sigmoid(gates[0, 1, :D]) * np.tanh(gates[0, 1, 3 * D:])))


def test_lstm_unrolled_is_lstm_units(tmp_path):
    """The LSTM is its unrolled net: W_xc x + b_c + W_hc (cont * h) fed to LSTMUnit, step by step."""
    net, w = build(tmp_path, {"x": (T, N, 6), "cont": (T, N)}, recurrent("LSTM", ["x", "cont"], ["h"]))
    x, = data(5, (T, N, 6))
    cont = cont_with_restarts()
    out = net.forward(x=x, cont=cont)["h"].numpy()
    W_xc, b_c, W_hc = (torch.tensor(b) for b in blobs_of(w))
    unit = converters.get("LSTMUnit").build(caffe_pb2.LayerParameter(type="LSTMUnit", top=["c", "h"]),
                                            [(1, N, D), (1, N, 4 * D), (1, N)])
    h = c = torch.zeros(1, N, D, dtype=torch.float64)
    for t in range(T):
        ct = torch.tensor(cont[t:t + 1], dtype=torch.float64)
        gate = (ct[..., None] * h) @ W_hc.T + torch.tensor(x[t:t + 1], dtype=torch.float64) @ W_xc.T + b_c
        c, h = unit(c, gate, ct)
        assert_parity(out[t:t + 1], h.numpy())


# ---- Caffe's carried state (RecurrentLayer::Forward_cpu without expose_hidden) ----------------------------------

def test_state_carries_over_between_forwards(tmp_path):
    """Without expose_hidden, h_0 (and c_0) of a forward are h_T (c_T) of the previous one; cont_0 = 0 drops
    them, reset() zeroes them (Caffe's Reset), a batch of another size starts from zero."""
    for type_, top in (("LSTM", "h"), ("RNN", "o")):
        net, w = build(tmp_path, {"x": (2 * T, N, 6), "cont": (2 * T, N)},
                       recurrent(type_, ["x", "cont"], [top]), name=f"long_{type_}", scale=2.0)
        x, = data(6, (2 * T, N, 6))
        cont = cont_with_restarts(2 * T)
        cont[T] = 1
        whole = net.forward(x=x, cont=cont)[top].numpy()
        short = build(tmp_path, {"x": (T, N, 6), "cont": (T, N)}, recurrent(type_, ["x", "cont"], [top]),
                      name=f"short_{type_}", weights={"t": caffe_files.read_caffemodel(w).params["t"]})[0]
        first = short.forward(x=x[:T], cont=cont[:T])[top].numpy()
        second = short.forward(x=x[T:], cont=cont[T:])[top].numpy()
        assert_parity(np.concatenate([first, second]), whole)
        module = short.module.module_of("t")
        module.reset()
        again = short.forward(x=x[T:], cont=cont[T:])[top].numpy()
        blobs = blobs_of(w)
        ref = (ref_lstm if type_ == "LSTM" else ref_rnn)(x[T:], cont[T:], *blobs)[0]
        assert_parity(again, ref)
        assert np.abs(again - second).max() > 1e-4
        restart = cont[T:].copy()
        restart[0] = 0
        assert_parity(short.forward(x=x[T:], cont=restart)[top].numpy(),
                      (ref_lstm if type_ == "LSTM" else ref_rnn)(x[T:], restart, *blobs)[0])
        other = module(torch.tensor(x[:T, :2]), torch.ones(T, 2))     # N = 2: no state of that shape
        assert_parity(other.detach().numpy(), (ref_lstm if type_ == "LSTM" else ref_rnn)(
            x[:T, :2], np.ones((T, 2)), *blobs)[0])


# ---- gradients -------------------------------------------------------------------------------------------------

def _module(type_, extra, bottoms, seed=0, scale=1.5):
    lay = text_format.Parse(extra, caffe_pb2.LayerParameter(name="t", type=type_))
    lay.bottom.extend(f"b{j}" for j in range(len(bottoms)))
    c = converters.get(type_)
    m = c.build(lay, bottoms)
    blobs = c.random_blobs(lay, c.param_shapes(lay, bottoms), np.random.default_rng(seed))
    c.load(m, [b * scale for b in blobs])
    return m.double()


def _functional(m, n_inputs):
    names = list(m.caffe_blobs)

    def f(*args):
        inputs, params = args[:n_inputs], args[n_inputs:]
        return torch.func.functional_call(m, dict(zip(names, params)), inputs)
    return f, [getattr(m, n).detach().clone().requires_grad_() for n in names]


@pytest.mark.parametrize("type_", ["LSTM", "RNN"])
def test_recurrent_gradients_are_finite_differences(type_):
    """gradcheck in float64 on x, x_static and every blob, with restarts in the middle of sequences."""
    t_, n_ = 4, 2
    m = _module(type_, "recurrent_param { num_output: 3 }", [(t_, n_, 2, 2), (t_, n_), (n_, 3)])
    cont = torch.tensor(cont_with_restarts(t_, n_), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(t_, n_, 2, 2, generator=g, dtype=torch.float64).mul(2).sub(1).requires_grad_()
    xs = torch.rand(n_, 3, generator=g, dtype=torch.float64).requires_grad_()
    f, params = _functional(m, 3)
    assert torch.autograd.gradcheck(lambda x, xs, *ps: f(x, cont, xs, *ps), (x, xs, *params), eps=1e-6, atol=1e-7)


def test_lstm_unit_gradients_are_caffes_backward():
    """Autograd of LSTMUnit equals LSTMUnitLayer::Backward_cpu (numpy) for binary cont, and finite differences."""
    m = converters.get("LSTMUnit").build(caffe_pb2.LayerParameter(type="LSTMUnit", top=["c", "h"]),
                                         [(1, N, D), (1, N, 4 * D), (1, N)])
    g = torch.Generator().manual_seed(1)
    c_prev = torch.randn(1, N, D, generator=g, dtype=torch.float64).requires_grad_()
    x = (3 * torch.randn(1, N, 4 * D, generator=g, dtype=torch.float64)).requires_grad_()
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    dc, dh = torch.randn(1, N, D, generator=g, dtype=torch.float64), torch.randn(1, N, D, generator=g,
                                                                                   dtype=torch.float64)
    c, h = m(c_prev, x, cont)
    torch.autograd.backward([c, h], [dc, dh])
    ref_dc_prev, ref_dx = ref_lstm_unit_backward(c_prev.detach().numpy()[0], x.detach().numpy()[0],
                                                 cont.numpy()[0], dc.numpy()[0], dh.numpy()[0])
    np.testing.assert_allclose(c_prev.grad.numpy()[0], ref_dc_prev, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy()[0], ref_dx, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: m(a, b, cont), (c_prev, x), eps=1e-6, atol=1e-7)
    # a fractional cont: the true derivative (Caffe's GPU kernel; its Backward_cpu departs there)
    frac = torch.tensor([[0.5, 0.0, 0.25]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: m(a, b, frac), (c_prev, x), eps=1e-6, atol=1e-7)


def test_no_gradient_where_caffe_shares_data_only():
    """RecurrentLayer::Reshape shares only the data of cont, h_0 / c_0 and of the tops h_T / c_T: Caffe's
    backward sends nothing to them and nothing back from them; x and x_static get their gradients."""
    t_, n_ = 3, 2
    m = _module("LSTM", "recurrent_param { num_output: 3 expose_hidden: true }",
                [(t_, n_, 2), (t_, n_), (n_, 2), (1, n_, 3), (1, n_, 3)])
    g = torch.Generator().manual_seed(2)
    x, xs, h0, c0 = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
                     for s in [(t_, n_, 2), (n_, 2), (1, n_, 3), (1, n_, 3)])
    cont = torch.ones(t_, n_, dtype=torch.float64, requires_grad=True)
    h, h_T, c_T = m(x, cont, xs, h0, c0)
    assert not h_T.requires_grad and not c_T.requires_grad
    h.sum().backward()
    assert x.grad is not None and xs.grad is not None and m.W_hc.grad is not None
    assert h0.grad is None and c0.grad is None and cont.grad is None


# ---- blobs, fillers, shapes, round trip ------------------------------------------------------------------------

def _shapes(type_, extra, bottoms, ntop):
    lay = text_format.Parse(extra, caffe_pb2.LayerParameter(name="t", type=type_))
    lay.bottom.extend(f"b{j}" for j in range(len(bottoms)))
    lay.top.extend(f"t{j}" for j in range(ntop))
    c = converters.get(type_)
    return lay, c, c.top_shapes(lay, bottoms), c.param_shapes(lay, bottoms)


def test_blob_order_and_shapes_as_the_unrolled_net():
    _, _, tops, params = _shapes("LSTM", "recurrent_param { num_output: 4 expose_hidden: true }",
                                 [(5, 3, 2, 3), (5, 3), (3, 7), (1, 3, 4), (1, 3, 4)], 3)
    assert tops == [(5, 3, 4), (1, 3, 4), (1, 3, 4)]
    assert params == [(16, 6), (16,), (16, 7), (16, 4)]            # W_xc, b_c, W_xc_static, W_hc
    _, _, tops, params = _shapes("RNN", "recurrent_param { num_output: 4 }", [(5, 3, 6), (5, 3), (3, 2, 2)], 1)
    assert tops == [(5, 3, 4)]
    assert params == [(4, 6), (4,), (4, 4), (4, 4), (4, 4), (4,)]  # W_xh, b_h, W_xh_static, W_hh, W_ho, b_o
    _, _, tops, params = _shapes("LSTMUnit", "", [(1, 3, 4), (1, 3, 16), (1, 3)], 2)
    assert tops == [(1, 3, 4), (1, 3, 4)] and params == []


@pytest.mark.parametrize("type_,bottoms,ntop,extra", [
    ("LSTM", [(5, 3, 6), (5, 4)], 1, ""),                                       # cont not T x N
    ("LSTM", [(5, 3, 6)], 1, ""),                                               # no cont
    ("LSTM", [(5, 3, 6), (5, 3), (2, 4)], 1, ""),                               # x_static of another N
    ("LSTM", [(5, 3, 6), (5, 3), (1, 3, 4), (1, 3, 5)], 3, "expose_hidden: true"),   # c_0 not 1 x N x D
    ("RNN", [(5, 3, 6), (5, 3)], 2, ""),                                        # a top too many
    ("RNN", [(5,), (5, 3)], 1, ""),                                             # x without a stream axis
    ("LSTMUnit", [(1, 3, 4), (1, 3, 12), (1, 3)], 2, None),                     # x not 4D wide
    ("LSTMUnit", [(2, 3, 4), (2, 3, 16), (2, 3)], 2, None),                     # more than one step
])
def test_bad_bottoms_are_one_line_errors(type_, bottoms, ntop, extra):
    text = "" if extra is None else f"recurrent_param {{ num_output: 4 {extra} }}"
    with pytest.raises(CaffeFileError, match=f"layer 't' \\({type_}\\)"):
        _shapes(type_, text, bottoms, ntop)


def test_num_output_must_be_positive():
    with pytest.raises(CaffeFileError, match="num_output must be positive"):
        _shapes("LSTM", "", [(5, 3, 6), (5, 3)], 1)


def test_fillers_fill_every_inner_product_of_the_unrolled_net(tmp_path):
    """weight_filler fills W_xc, W_xc_static, W_hc (W_xh, W_xh_static, W_hh, W_ho); bias_filler b_c (b_h, b_o)."""
    fill = ('weight_filler { type: "constant" value: 0.5 } bias_filler { type: "constant" value: -0.25 }')
    for type_, nb in (("LSTM", 4), ("RNN", 6)):
        p = tmp_path / f"{type_}.prototxt"
        inputs = {"x": (T, N, 6), "cont": (T, N), "xs": (N, 2)}
        p.write_text(net_text(inputs, recurrent(type_, list(inputs), ["y"], fill)))
        net = Net(str(p))
        blobs = [b.detach().numpy() for b in net.params["t"]]
        assert len(blobs) == nb
        biases = [1] if type_ == "LSTM" else [1, 5]
        for j, b in enumerate(blobs):
            assert np.all(b == (-0.25 if j in biases else 0.5)), (type_, j)
        gauss = recurrent(type_, list(inputs), ["y"], 'weight_filler { type: "gaussian" std: 0.1 }')
        p.write_text(net_text(inputs, gauss))
        net = Net(str(p), seed=0)
        blobs = [b.detach().numpy() for b in net.params["t"]]
        assert all(np.all(blobs[j] == 0) for j in biases)          # default bias filler: constant 0
        assert all(0.05 < blobs[j].std() < 0.2 for j in range(nb) if j not in biases)


def test_caffemodel_round_trip(tmp_path):
    inputs = {"x": (T, N, 6), "cont": (T, N), "xs": (N, 2)}
    net, w = build(tmp_path, inputs, recurrent("LSTM", list(inputs), ["h"]))
    saved = tmp_path / "saved.caffemodel"
    net.save_caffemodel(saved)
    again = caffe_files.read_caffemodel(saved).params["t"]
    original = caffe_files.read_caffemodel(w).params["t"]
    assert [a.shape for a in again] == [(16, 6), (16,), (16, 2), (16, 4)]
    assert all(np.array_equal(a, b) for a, b in zip(again, original))
    x, xs = data(7, (T, N, 6), (N, 2))
    cont = cont_with_restarts()
    reloaded = Net(str(tmp_path / "rec.prototxt"), str(saved))
    expected = net.forward(x=x, cont=cont, xs=xs)["h"].numpy()
    np.testing.assert_array_equal(reloaded.forward(x=x, cont=cont, xs=xs)["h"].numpy(), expected)
    net.save(tmp_path / "rec.pt")                  # sfport's .pt: the blobs by their Caffe names
    assert list(net.module.module_of("t").state_dict()) == ["W_xc", "b_c", "W_xc_static", "W_hc"]
    np.testing.assert_array_equal(Net(str(tmp_path / "rec.pt")).forward(x=x, cont=cont, xs=xs)["h"].numpy(),
                                  expected)


def test_shape_inference_of_a_recurrent_net():
    net = text_format.Parse(net_text({"x": (T, N, 6), "cont": (T, N)}, recurrent("LSTM", ["x", "cont"], ["h"])
                                     + layer("ip", "InnerProduct", ["h"], ["y"],
                                             "inner_product_param { num_output: 2 axis: 2 }")),
                            caffe_pb2.NetParameter())
    ls = shapes.infer(net)
    assert ls[1].tops == [(T, N, D)] and ls[2].tops == [(T, N, 2)]


# ---- OpenCV --------------------------------------------------------------------------------------------------

