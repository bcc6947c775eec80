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

The modules are :mod:`.modules.recurrent`.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Converter, layer_error as _bad, register


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
    module_class = ""    # its module's class in .modules.recurrent
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
        from .modules import recurrent
        _, _, k, ks, expose, d = self._setup(layer, bottom_shapes)
        return getattr(recurrent, self.module_class)(d, k, ks, expose, layer.name)

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
    module_class = "CaffeLSTM"
    gates = 4
    num_states = 2
    state_names = (("h_0", "c_0"), ("h_T", "c_T"))


@register("RNN")
class RNNConverter(_RecurrentConverter):
    module_class = "CaffeRNN"
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
        from .modules.recurrent import CaffeLSTMUnit
        self._check(layer, bottom_shapes)
        return CaffeLSTMUnit()

    def input_axes(self, layer, bottom, shape):
        return {1: "batch"}                       # 1 x N x ...: one time step of N streams

    def input_value(self, layer, bottom, shape, image_shape):
        return _cont_value(shape) if bottom == 2 and len(shape) == 2 else None


def __getattr__(name: str):
    """The torch side's names (:mod:`.modules.recurrent`), importable from here as before the split (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .modules import recurrent
    return getattr(recurrent, name)
