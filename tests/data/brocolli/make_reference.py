"""Makes the reference data of tests/test_brocolli.py with the oracle pycaffe (brocolli-caffe 9.0.2, built by
../shared/tools/build-caffe-oracle.sh):

    /tmp/oracle/venv/bin/python tests/data/brocolli/make_reference.py tests/data/brocolli

One tiny Input-fed net per case (CASES: the layer's parameter text and the input shape), input drawn with
numpy.random.RandomState(case index) (values in [-8, 8], some exactly at the layers' kinks, and a NaN for the
activations), forward once; saved: the prototxt text, the input and the top (<name>.npz)."""
import os
import sys

import numpy as np

OUT = os.path.abspath(sys.argv[1])
CASES = {
    "hardsigmoid": ('type: "HardSigmoid"', (2, 3, 4, 5)),
    "hardsigmoid_params": ('type: "HardSigmoid" hardsigmoid_param { alpha: 0.3 beta: 0.4 }', (2, 3, 4, 5)),
    "hardswish": ('type: "HardSwish"', (2, 3, 4, 5)),
    "pad_constant": ('type: "Pad" pad_param { pad_u: 1 pad_d: 2 pad_l: 3 pad_r: 0 pad_value: 1.5 }', (2, 3, 4, 5)),
    "pad_replicate": ('type: "Pad" pad_param { pad_type: REPLICATE pad_u: 2 pad_d: 1 pad_l: 1 pad_r: 3 }',
                      (1, 2, 4, 5)),
    "pad_reflect": ('type: "Pad" pad_param { pad_type: REFLECT pad_u: 3 pad_d: 1 pad_l: 2 pad_r: 4 }', (1, 2, 4, 5)),
    "pad_crop": ('type: "Pad" pad_param { pad_u: -1 pad_d: -2 pad_l: -1 pad_r: -1 }', (2, 2, 6, 5)),
    "unsqueeze_1": ('type: "Unsqueeze" unsqueeze_param { dim: 1 }', (2, 3, 4)),
    "unsqueeze_last": ('type: "Unsqueeze" unsqueeze_param { dim: -1 }', (2, 3, 4)),
}


def main():
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    import tempfile
    for k, (name, (layer, shape)) in enumerate(CASES.items()):
        text = (f'input: "data"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                f'layer {{ name: "l" {layer} bottom: "data" top: "out" }}\n')
        rng = np.random.RandomState(k)
        x = rng.uniform(-8, 8, shape).astype(np.float32)
        x.flat[:6] = [-3.0, 3.0, 0.0, -2.5, 2.5, 6.0][:x.size]
        if name.startswith("hard"):
            x.flat[6] = np.nan
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
            f.write(text)
        net = caffe.Net(f.name, caffe.TEST)
        net.blobs["data"].data[...] = x
        out = net.forward()["out"].copy()
        np.savez(os.path.join(OUT, f"{name}.npz"), prototxt=np.array(text), x=x, out=out)
        print(name, out.shape)


if __name__ == "__main__":
    main()
