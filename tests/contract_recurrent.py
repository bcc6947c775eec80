"""Contract cases (see tests/test_converter_contract.py) of the recurrent converters: type -> (extra LayerParameter
text, bottom shapes, number of tops)."""

CASES: dict = {
    # x (T x N x ...), cont (T x N), x_static (N x ...): input dim 3*2 = 6, static dim 5
    "LSTM": ("recurrent_param { num_output: 4 }", [(3, 2, 3, 2), (3, 2), (2, 5)], 1),
    "RNN": ("recurrent_param { num_output: 4 expose_hidden: true }", [(3, 2, 6), (3, 2), (1, 2, 4)], 2),
    # c_prev (1 x N x D), gate input (1 x N x 4D), cont (1 x N)
    "LSTMUnit": ("", [(1, 2, 3), (1, 2, 12), (1, 2)], 2),
}
