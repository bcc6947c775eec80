"""Makes the solver trajectories in this folder with a real Caffe: the CPU pycaffe that
../shared/tools/build-caffe-oracle.sh builds (brocolli-caffe 9.0.2, an SSD-era fork whose six solvers are BVLC's).

    VENV=/tmp/oracle/venv WORK=/tmp/oracle/work bash ../shared/tools/build-caffe-oracle.sh
    /tmp/oracle/venv/bin/python tests/data/solvers/make_reference.py ../shared/golden/solver tests/data/solvers

The net is the golden tiny SphereFace net (../shared/golden/solver/tiny_sphereface.prototxt) with its ImageData layer
replaced by HDF5Data over the very batches that ImageData delivered (input_batches.npz; the oracle has no OpenCV),
started from the golden init.caffemodel. Each solver of SOLVERS runs 10 updates one `step(1)` at a time with iter_size 2,
weight decay and gradient clipping. AdaGrad and RMSProp use delta 1e-4: their first updates are lr * g / (|g| * c + delta),
which turns the float-summation noise of a gradient that cancels to ~1e-6 (a few 1e-9) into lr-sized differences
when delta is 1e-6 or less, in any two correct implementations. Saved per solver (<type>.npz): after every update, every learnable blob except
fc5's weights, and 256 fixed elements of fc5's weights (FC5_SAMPLE); for AdaDelta and Adam also the fields of the
.solverstate Caffe wrote at update 5 (caffe_state_*: iter, current_step, learned_net; caffe_history_<i>: its 2 x 16
history blobs in Caffe's order). The test writes that SolverState back at run time with plain protobuf, in the field
order of SGDSolver::SnapshotSolverStateToBinaryProto; the bytes so written equal the file Caffe wrote (checked for
both when the files were converted: 146,430 and 146,426 bytes, identical). The test resumes it on sfport's own
weights of update 5. This script is a record of how the data was made; the tests read only its outputs.
"""
import os
import re
import shutil
import sys
import tempfile

import h5py
import numpy as np

GOLDEN, OUT = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
ITERS = 10
FC5_SAMPLE = np.sort(np.random.RandomState(0).choice(32 * 480, 256, replace=False))
COMMON = "iter_size: 2\nweight_decay: 0.0005\nmax_iter: 10\nsnapshot: 5\nrandom_seed: 1701\nsolver_mode: CPU\n" \
         "display: 1\n"
SOLVERS = {
    "Nesterov": 'base_lr: 0.02\nlr_policy: "step"\nstepsize: 4\ngamma: 0.5\nmomentum: 0.9\nclip_gradients: 2.8\n'
                'regularization_type: "L1"\n',
    "AdaGrad": 'base_lr: 0.01\nlr_policy: "fixed"\ndelta: 1e-4\nclip_gradients: 2.8\n',
    "RMSProp": 'base_lr: 0.002\nlr_policy: "inv"\ngamma: 0.1\npower: 0.75\nrms_decay: 0.98\ndelta: 1e-4\n'
               'clip_gradients: 2.8\n',
    "AdaDelta": 'base_lr: 1.0\nlr_policy: "fixed"\nmomentum: 0.95\ndelta: 1e-6\nclip_gradients: 2.8\n',
    "Adam": 'base_lr: 0.002\nlr_policy: "multistep"\nstepvalue: 6\ngamma: 0.5\nmomentum: 0.9\nmomentum2: 0.999\n'
            'delta: 1e-8\nclip_gradients: 2.8\n',
}
STATES_KEPT = ("AdaDelta", "Adam")   # two histories per blob: the layout SGD's golden files do not show
HDF5_DATA = ('layer {\n  name: "data"\n  type: "HDF5Data"\n  top: "data"\n  top: "label"\n'
             '  hdf5_data_param {\n    source: "train_h5.txt"\n    batch_size: 8\n  }\n}\n')


def net_text(golden):
    text = open(os.path.join(golden, "tiny_sphereface.prototxt")).read()
    start = text.index("layer {")
    end = text.index("layer {", start + 1)
    return text[:start] + HDF5_DATA + text[end:]


def main():
    os.environ.setdefault("GLOG_minloglevel", "1")
    import caffe
    caffe.set_mode_cpu()
    work = tempfile.mkdtemp()
    batches = np.load(os.path.join(GOLDEN, "input_batches.npz"))
    with h5py.File(os.path.join(work, "train.h5"), "w") as f:
        f["data"] = batches["data"].astype(np.float32)
        f["label"] = batches["label"].astype(np.float32)
    open(os.path.join(work, "train_h5.txt"), "w").write("train.h5\n")
    open(os.path.join(work, "net.prototxt"), "w").write(net_text(GOLDEN))
    shutil.copy(os.path.join(GOLDEN, "init.caffemodel"), work)
    os.chdir(work)
    for kind, fields in SOLVERS.items():
        path = f"{kind}.prototxt"
        open(path, "w").write(f'net: "net.prototxt"\ntype: "{kind}"\n{fields}{COMMON}snapshot_prefix: "{kind}"\n')
        solver = getattr(caffe, f"{kind}Solver")(path)
        solver.net.copy_from("init.caffemodel")
        out = {"solver": np.array(open(path).read()), "fc5_sample": FC5_SAMPLE}
        for it in range(1, ITERS + 1):
            solver.step(1)
            for name, blobs in solver.net.params.items():
                for j, b in enumerate(blobs):
                    data = b.data.copy()
                    if name == "fc5" and j == 0:
                        data = data.reshape(-1)[FC5_SAMPLE]
                    out[f"w{it}/{name}/{j}"] = data
        if kind in STATES_KEPT:   # the fields of the SolverState Caffe wrote, as arrays (no model file kept)
            state = caffe.proto.caffe_pb2.SolverState()
            state.ParseFromString(open(f"{kind}_iter_5.solverstate", "rb").read())
            out.update(caffe_state_iter=np.int64(state.iter), caffe_state_current_step=np.int64(state.current_step),
                       caffe_state_learned_net=np.array(state.learned_net),
                       caffe_state_histories=np.int64(len(state.history)))
            for i, h in enumerate(state.history):
                out[f"caffe_history_{i}"] = np.asarray(h.data, np.float32).reshape(tuple(h.shape.dim))
        np.savez_compressed(os.path.join(OUT, f"{kind}.npz"), **out)
        print(kind, "done")


if __name__ == "__main__":
    main()
