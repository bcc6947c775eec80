"""The torch side of :mod:`sfport.converters.recurrent`: LSTMUnit's step, the unrolled nets of RNN and LSTM as
modules, and their loops in TorchScript's form."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import in_export_form, in_fixed_time


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

