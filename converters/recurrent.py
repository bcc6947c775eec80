"""Recurrent layers: RNN, LSTM (Caffe's RecurrentLayer and its unrolled nets) and LSTMUnit.

Caffe's definition (BVLC caffe master) is followed step for step:

* ``src/caffe/layers/recurrent_layer.cpp`` ``RecurrentLayer::LayerSetUp`` / ``Reshape`` / ``Forward_cpu``:
  bottoms ``x`` (T x N x ...), ``cont`` (T x N), an optional static input ``x_static`` (N x ...) - present when
  there are more bottoms than ``2 + expose_hidden * (number of recurrent blobs)`` - and, with ``expose_hidden``,
  the initial recurrent states (LSTM: ``h_0``, ``c_0``; RNN: ``h_0``; each 1 x N x num_output) as the last
  bottoms and the final ones (LSTM: ``h_T``, ``c_T``; RNN: ``h_T``) as the tops after the output. The layer's
  blobs are the parameters the unrolled net owns, in the order its layers create them.
  Without ``expose_hidden`` ``Forward_cpu`` copies the previous forward's final state into the initial one (the
  state is zero before the first forward; ``Reset`` zeroes it): the modules here keep that state between calls
  too (``reset()`` is Caffe's ``Reset``); a state whose shape no longer fits (N changed) starts from zero.
  Gradients: ``Reshape`` shares only the *data* of the exposed initial states (bottoms) and of the final states
  (tops), and ``cont`` only its data (``Backward_cpu``: "Cannot backpropagate to sequence indicators"), so Caffe
  sends no gradient into ``cont`` or ``h_0``/``c_0`` and none back from ``h_T``/``c_T``; the modules detach them
  likewise. ``x`` and ``x_static`` share data and diff and get the true gradients (autograd).
* ``src/caffe/layers/lstm_layer.cpp`` ``LSTMLayer::FillUnrolledNet``: ``W_xc_x = W_xc x + b_c`` (InnerProduct,
  axis 2), ``W_xc_x_static = W_xc_static x_static`` (axis 1, no bias), and for t = 1..T:
  ``h_conted_{t-1} = cont_t * h_{t-1}`` (Scale, axis 0), ``gate_input_t = W_hc h_conted_{t-1} + W_xc_x_t
  [+ W_xc_x_static]`` (Eltwise SUM), then LSTMUnit. Blobs: ``W_xc`` (4D x K), ``b_c`` (4D), [``W_xc_static``
  (4D x K_static)], ``W_hc`` (4D x D).
* ``src/caffe/layers/rnn_layer.cpp`` ``RNNLayer::FillUnrolledNet``: ``W_xh_x = W_xh x + b_h``, ``W_xh_x_static =
  W_xh_static x_static``, for t: ``h_conted = cont_t * h_{t-1}``, ``h_t = tanh(W_hh h_conted + W_xh_x_t
  [+ W_xh_x_static])``, ``o_t = tanh(W_ho h_t + b_o)``; the output is o. Blobs: ``W_xh`` (D x K), ``b_h`` (D),
  [``W_xh_static`` (D x K_static)], ``W_hh`` (D x D), ``W_ho`` (D x D), ``b_o`` (D).
* ``src/caffe/layers/lstm_unit_layer.cpp`` ``LSTMUnitLayer::Forward_cpu``: bottoms ``c_{t-1}`` (1 x N x D), the
  gate input X (1 x N x 4D, rows in the order i, f, o, g), ``cont_t`` (1 x N); tops ``c_t``, ``h_t`` (1 x N x D):
  ``i = sigmoid(X_i)``, ``f = cont == 0 ? 0 : cont * sigmoid(X_f)``, ``o = sigmoid(X_o)``, ``g = tanh(X_g)``,
  ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``. The gradient is autograd's, the true derivative: it
  is what ``LSTMUnitBackward`` (lstm_unit_layer.cu: ``f_diff = cont * c_term_diff * c_prev`` times the unscaled
  sigmoid's ``f (1 - f)``) computes, and what ``Backward_cpu`` computes for a binary ``cont`` (the only kind
  Caffe's nets feed); for a fractional ``cont`` ``Backward_cpu`` takes ``f (1 - f)`` of the already scaled
  ``f = cont * sigmoid``, which is not the derivative (Caffe's CPU and GPU disagree there; sfport is the GPU).
  No gradient goes to ``cont`` (``CHECK(!propagate_down[2])``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


from .base import Converter, in_export_form, in_fixed_time, layer_error as _bad, register


def lstm_unit(c_prev: torch.Tensor, x: torch.Tensor, cont: torch.Tensor):
    """LSTMUnitLayer::Forward_cpu on (..., N, D) c_prev, (..., N, 4D) gate input and (..., N) cont: (c, h)."""
    d = c_prev.shape[-1]
    cont = cont.unsqueeze(-1).to(x.dtype)
    i = torch.sigmoid(x[..., :d])
    f = torch.sigmoid(x[..., d:2 * d])
    f = torch.where(cont == 0, torch.zeros_like(f), cont * f)   # (*cont == 0) ? 0 : *cont * sigmoid(...)
    o = torch.sigmoid(x[..., 2 * d:3 * d])
    g = torch.tanh(x[..., 3 * d:])
    c = f * c_prev + i * g
    return c, o * torch.tanh(c)


def _lstm_scan(wx: torch.Tensor, ws: torch.Tensor, cont: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
               w_hc: torch.Tensor):
    """CaffeLSTM's loop over t (the same operations as ``_step``, ``ws`` 0 without a static input) in a form
    TorchScript compiles: called from a trace it stays a loop (ONNX Loop), so T stays dynamic. (top, h_T, c_T)"""
    outs = []
    for t in range(wx.size(0)):
        ct = cont[t]
        gate = F.linear(h * ct.unsqueeze(-1), w_hc) + wx[t] + ws
        c, h = lstm_unit(c, gate, ct)
        outs.append(h)
    return torch.stack(outs), h, c


def _rnn_scan(wx: torch.Tensor, ws: torch.Tensor, cont: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor,
              w_ho: torch.Tensor, b_o: torch.Tensor):
    """CaffeRNN's loop over t in TorchScript's form (see :func:`_lstm_scan`): (top o, h_T)."""
    outs = []
    for t in range(wx.size(0)):
        h = torch.tanh(F.linear(h * cont[t].unsqueeze(-1), w_hh) + wx[t] + ws)
        outs.append(torch.tanh(F.linear(h, w_ho, b_o)))
    return torch.stack(outs), h


_SCRIPTED: dict = {}


def _scripted(fn):
    """``fn`` compiled by TorchScript, once (on first export, not at import)."""
    if fn not in _SCRIPTED:
        _SCRIPTED[fn] = torch.jit.script(fn)
    return _SCRIPTED[fn]


class CaffeLSTMUnit(nn.Module):
    caffe_blobs: tuple = ()

    def forward(self, c_prev, x, cont):
        # Backward_cpu: CHECK(!propagate_down[2]) - no gradient into the sequence indicators
        return lstm_unit(c_prev, x, cont.detach())


class _Recurrent(nn.Module):
    """The unrolled net of RNNLayer / LSTMLayer (recurrent_layer.cpp, and the type's FillUnrolledNet).

    In :func:`sfport.converters.export_form` (export and its checks) the module is a pure function of its bottoms:
    without expose_hidden it starts from the zero state (Caffe's first forward, or after ``Reset``) and keeps no
    state; a trace calls the scripted loop (``_lstm_scan`` / ``_rnn_scan``: T dynamic, ONNX Loop), or unrolls the
    loop over the traced T within :func:`sfport.converters.fixed_time`."""

    num_states = 1

    def __init__(self, num_output: int, input_dim: int, static_dim: int | None, expose_hidden: bool, gates: int,
                 names: tuple, layer_name: str = "", type_: str = ""):
        super().__init__()
        rows = gates * num_output
        self.num_output, self.static, self.expose_hidden = num_output, static_dim is not None, expose_hidden
        # the parameters the unrolled net owns, named and ordered as FillUnrolledNet creates them
        w_x, b_x, w_static, w_h = names
        shapes = [(w_x, (rows, input_dim)), (b_x, (rows,))]
        if self.static:
            shapes.append((w_static, (rows, static_dim)))
        shapes.append((w_h, (rows, num_output)))
        for name, shape in shapes:
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        self.caffe_blobs = [name for name, _ in shapes]
        self._names = names
        self._state = None   # recur_output_blobs_: the final states of the last forward (no expose_hidden)
        if not expose_hidden:
            self.export_note = (f"layer '{layer_name}' ({type_}) is exported without the state Caffe carries from one "
                                f"forward to the next: every run starts from zero h_0{', c_0' * (gates == 4)} "
                                f"(Caffe's first forward, or after Reset); expose_hidden carries it as bottoms "
                                f"and tops")

    def reset(self):
        """RecurrentLayer::Reset: zero the carried hidden state."""
        self._state = None

    def _initial(self, hidden, n, like):
        shape = (1, n, self.num_output)
        if self.expose_hidden:
            for j, h in enumerate(hidden):
                if tuple(h.shape) != shape:
                    raise ValueError(f"bottom[{j}] shape must match hidden state input shape {list(shape)}, "
                                     f"not {list(h.shape)}")
            return [h.detach().to(like)[0] for h in hidden]    # ShareData only: no diff to h_0 / c_0
        if in_export_form():   # an exported graph is a function of its inputs: the zero state
            return [like.new_zeros(shape[1:]) for _ in range(self.num_states)]
        if self._state is not None and all(tuple(s.shape) == shape for s in self._state):
            return [s.to(like)[0] for s in self._state]
        return [like.new_zeros(shape[1:]) for _ in range(self.num_states)]

    def forward(self, x, cont, *rest):
        t_, n = x.shape[0], x.shape[1]
        if tuple(cont.shape) != (t_, n):
            raise ValueError(f"cont must be T x N = {[t_, n]}, not {list(cont.shape)}")
        static = rest[0] if self.static else None
        hidden = rest[1:] if self.static else rest
        x = x.reshape(t_, n, -1)
        w_x, b_x, w_static, _ = self._names
        wx = F.linear(x, getattr(self, w_x), getattr(self, b_x))      # x_transform (InnerProduct axis 2)
        ws = F.linear(static.reshape(n, -1), getattr(self, w_static)) if self.static else None  # axis 1, no bias
        cont = cont.detach().to(x.dtype)                               # no gradient to sequence indicators
        states = self._initial(hidden, n, wx)
        if torch.jit.is_tracing() and in_export_form() and not in_fixed_time():
            top, states = self._scan(states, wx, wx.new_zeros(()) if ws is None else ws, cont)
        else:
            outs = []
            for t in range(t_):
                ct = cont[t]
                states, out = self._step(states, wx[t], ws, ct)
                outs.append(out)
            top = torch.stack(outs)
        if not self.expose_hidden and not torch.jit.is_tracing() and not in_export_form():
            self._state = [s.detach().unsqueeze(0) for s in states]
        if self.expose_hidden:   # the final states' tops share data only: no gradient flows back from them
            return (top, *[s.detach().unsqueeze(0) for s in states])
        return top


class CaffeLSTM(_Recurrent):
    num_states = 2   # h, c (RecurrentInputBlobNames: h_0, c_0; RecurrentOutputBlobNames: h_T, c_T)

    def __init__(self, num_output, input_dim, static_dim, expose_hidden, name=""):
        super().__init__(num_output, input_dim, static_dim, expose_hidden, 4, ("W_xc", "b_c", "W_xc_static", "W_hc"),
                         name, "LSTM")

    def _scan(self, states, wx, ws, cont):
        top, h, c = _scripted(_lstm_scan)(wx, ws, cont, states[0], states[1], self.W_hc)
        return top, [h, c]

    def _step(self, states, wx_t, ws, ct):
        h, c = states
        h_conted = h * ct.unsqueeze(-1)                                # Scale axis 0: cont_t * h_{t-1}
        gate = F.linear(h_conted, self.W_hc) + wx_t                     # W_hc_h + W_xc_x_t
        if ws is not None:
            gate = gate + ws                                           # + W_xc_x_static
        c, h = lstm_unit(c, gate, ct)
        return [h, c], h


class CaffeRNN(_Recurrent):
    def __init__(self, num_output, input_dim, static_dim, expose_hidden, name=""):
        super().__init__(num_output, input_dim, static_dim, expose_hidden, 1, ("W_xh", "b_h", "W_xh_static", "W_hh"),
                         name, "RNN")
        self.W_ho = nn.Parameter(torch.zeros(num_output, num_output))
        self.b_o = nn.Parameter(torch.zeros(num_output))
        self.caffe_blobs = self.caffe_blobs + ["W_ho", "b_o"]

    def _step(self, states, wx_t, ws, ct):
        (h,) = states
        h_conted = h * ct.unsqueeze(-1)                                # cont_t * h_{t-1}
        pre = F.linear(h_conted, self.W_hh) + wx_t                      # W_hh_h + W_xh_x_t
        if ws is not None:
            pre = pre + ws                                             # + W_xh_x_static
        h = torch.tanh(pre)                                            # h_neuron_t
        o = torch.tanh(F.linear(h, self.W_ho, self.b_o))                # o_neuron_t: tanh(W_ho h_t + b_o)
        return [h], o

    def _scan(self, states, wx, ws, cont):
        top, h = _scripted(_rnn_scan)(wx, ws, cont, states[0], self.W_hh, self.W_ho, self.b_o)
        return top, [h]


def _cont_value(shape) -> np.ndarray:
    """A made-up ``cont`` (T x N) with both of its meanings: even streams start a sequence at t = 0 (0) and again
    in the middle, odd streams continue (1) from the initial state (expose_hidden's h_0, c_0)."""
    t_, n = shape
    cont = np.ones((t_, n), np.float32)
    cont[0, 0::2] = 0
    if t_ > 1:
        for j in range(0, n, 2):
            cont[1 + (j // 2) % (t_ - 1), j] = 0
    return cont


class _RecurrentConverter(Converter):
    module_class = None
    gates = 1
    num_states = 1

    def _setup(self, layer, bottom_shapes, ntop=None):
        """RecurrentLayer::LayerSetUp's checks: (T, N, input dim, static dim or None, expose_hidden, D)."""
        p = layer.recurrent_param
        if p.num_output <= 0:
            raise _bad(layer, "recurrent_param.num_output must be positive")
        expose = bool(p.expose_hidden)
        nh = self.num_states if expose else 0
        if len(bottom_shapes) not in (2 + nh, 3 + nh):
            names = ", ".join(["x", "cont", "[x_static]"] + list(self.state_names[0] if expose else ()))
            raise _bad(layer, f"needs bottoms {names}, not {len(bottom_shapes)} bottoms")
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(x) < 2:
            raise _bad(layer, "bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...)")
        t_, n = x[0], x[1]
        if cont != (t_, n):
            raise _bad(layer, f"bottom[1] (cont) must be (#timesteps, #streams) = {[t_, n]}, not {list(cont)}")
        static = len(bottom_shapes) > 2 + nh
        static_dim = None
        if static:
            s = tuple(bottom_shapes[2])
            if len(s) < 1 or s[0] != n:
                raise _bad(layer, f"bottom[2] (x_static) must have N = {n} rows, not {list(s)}")
            static_dim = math.prod(s[1:])
        d = p.num_output
        if expose:
            for j, s in enumerate(bottom_shapes[2 + static:]):
                if tuple(s) != (1, n, d):
                    raise _bad(layer, f"bottom[{2 + static + j}] shape must match hidden state input shape "
                                      f"{[1, n, d]}, not {list(s)}")
        if ntop is not None and ntop != 1 + nh:
            raise _bad(layer, f"needs {1 + nh} tops, not {ntop}")
        return t_, n, math.prod(x[2:]), static_dim, expose, d

    def top_shapes(self, layer, bottom_shapes):
        t_, n, _, _, expose, d = self._setup(layer, bottom_shapes, len(layer.top))
        return [(t_, n, d)] + [(1, n, d)] * (self.num_states if expose else 0)

    def param_shapes(self, layer, bottom_shapes):
        _, _, k, ks, _, d = self._setup(layer, bottom_shapes)
        rows = self.gates * d
        return ([(rows, k), (rows,)] + ([(rows, ks)] if ks is not None else []) + [(rows, d)]
                + self.extra_shapes(d))

    def extra_shapes(self, d):
        return []

    def build(self, layer, bottom_shapes):
        _, _, k, ks, expose, d = self._setup(layer, bottom_shapes)
        return self.module_class(d, k, ks, expose, layer.name)

    def input_axes(self, layer, bottom, shape):
        """recurrent_layer.cpp Reshape: x and cont are T x N, x_static N x ..., h_0 / c_0 1 x N x D. N may change
        at any forward; T is the one LayerSetUp unrolled the net for (CHECK_EQ(T_, ...): "input number of
        timesteps changed"), but no blob depends on it: the same model set up at another T runs there."""
        nh = self.num_states if layer.recurrent_param.expose_hidden else 0
        if bottom < 2:
            return {0: "time", 1: "batch"}
        if bottom == 2 and len(layer.bottom) > 2 + nh:
            return {0: "batch"}
        return {1: "batch"}

    def input_value(self, layer, bottom, shape, image_shape):
        return _cont_value(shape) if bottom == 1 and len(shape) == 2 else None

    def fillers(self, layer):
        """Every InnerProduct of the unrolled net takes recurrent_param's weight_filler (and bias_filler)."""
        p = layer.recurrent_param
        nh = self.num_states if p.expose_hidden else 0
        static = len(layer.bottom) > 2 + nh
        return ([p.weight_filler, p.bias_filler] + ([p.weight_filler] if static else []) + [p.weight_filler]
                + self.extra_fillers(p))

    def extra_fillers(self, p):
        return []


@register("LSTM")
class LSTMConverter(_RecurrentConverter):
    module_class = CaffeLSTM
    gates = 4
    num_states = 2
    state_names = (("h_0", "c_0"), ("h_T", "c_T"))


@register("RNN")
class RNNConverter(_RecurrentConverter):
    module_class = CaffeRNN
    gates = 1
    num_states = 1
    state_names = (("h_0",), ("h_T",))

    def extra_shapes(self, d):
        return [(d, d), (d,)]            # W_ho, b_o

    def extra_fillers(self, p):
        return [p.weight_filler, p.bias_filler]


@register("LSTMUnit")
class LSTMUnitConverter(Converter):
    """LSTMUnitLayer::Reshape: c_prev and X are 1 x N x D and 1 x N x 4D, cont 1 x N; both tops like c_prev."""

    def _check(self, layer, bottom_shapes):
        if len(bottom_shapes) != 3:
            raise _bad(layer, f"needs bottoms c_prev, x, cont, not {len(bottom_shapes)}")
        c, x, cont = (tuple(s) for s in bottom_shapes)
        if len(c) != 3 or len(x) != 3 or len(cont) != 2 or c[0] != 1 or x[0] != 1 or cont[0] != 1:
            raise _bad(layer, f"bottoms must be 1 x N x D, 1 x N x 4D and 1 x N, not {list(c)}, {list(x)}, "
                              f"{list(cont)}")
        if x[1] != c[1] or cont[1] != c[1] or x[2] != 4 * c[2]:
            raise _bad(layer, f"bottoms must be 1 x N x D, 1 x N x 4D and 1 x N, not {list(c)}, {list(x)}, "
                              f"{list(cont)}")
        return c

    def top_shapes(self, layer, bottom_shapes):
        c = self._check(layer, bottom_shapes)
        if len(layer.top) != 2:
            raise _bad(layer, f"needs tops c, h, not {len(layer.top)} tops")
        return [c, c]

    def param_shapes(self, layer, bottom_shapes):
        self._check(layer, bottom_shapes)
        return []

    def build(self, layer, bottom_shapes):
        self._check(layer, bottom_shapes)
        return CaffeLSTMUnit()

    def input_axes(self, layer, bottom, shape):
        return {1: "batch"}                       # 1 x N x ...: one time step of N streams

    def input_value(self, layer, bottom, shape, image_shape):
        return _cont_value(shape) if bottom == 2 and len(shape) == 2 else None
