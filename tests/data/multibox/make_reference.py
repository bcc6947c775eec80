"""The reference data of tests/test_multibox_loss.py: the SSD fork's MultiBoxLoss (brocolli-caffe 9.0.2, built by
../shared/tools/build-caffe-oracle.sh) run in its own pycaffe, one configuration per .npz file of this folder.

Run with the oracle's Python (see README.md): ``/tmp/oracle/venv/bin/python tests/data/multibox/make_reference.py``.
Each configuration runs in its own subprocess (a failed Caffe CHECK aborts the process).

Each net: an Input layer gives ``loc_in`` (N x P*L*4), ``conf_in`` (N x P*C), ``prior`` (1 x 2 x P*4) and ``label``
(1 x 1 x G x 8); two Scale layers with one constant weight 1 (num_axes 0) make ``loc`` and ``conf``, which then need
backward, and the MultiBoxLoss reads ``loc``, ``conf``, ``prior``, ``label``. Not force_backward: the fork's
MultiBoxLossLayer::AllowForceBackward (LossLayer's) lets force_backward ask for the prior and label bottoms too, and
its Backward_cpu LOG(FATAL)s on those. Saved per configuration: the net's prototxt text, the four inputs, the loss
(the net's forward output, loss_weight applied in the diff only as Caffe does) and the diffs of ``loc`` and ``conf``
after net.backward() (the MultiBoxLoss layer's bottom diffs).
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
N, GRID, SIZES = 3, 4, [(0.2, 0.2), (0.26, 0.26), (0.34, 0.34), (0.42, 0.2)]   # P = 4 * 4 * 4 = 64 priors
C = 4

BASE = {   # MobileNet-SSD's train net (../shared/fixtures/ssd/MobileNetSSD_train.prototxt), 4 classes
    "loc_loss_type": "SMOOTH_L1", "conf_loss_type": "SOFTMAX", "loc_weight": "1.0", "num_classes": str(C),
    "share_location": "true", "match_type": "PER_PREDICTION", "overlap_threshold": "0.5",
    "use_prior_for_matching": "true", "background_label_id": "0", "use_difficult_gt": "true",
    "neg_pos_ratio": "3.0", "neg_overlap": "0.5", "code_type": "CENTER_SIZE", "ignore_cross_boundary_bbox": "false",
    "mining_type": "MAX_NEGATIVE",
}

# name -> (multibox_loss_param changes, loss_param text, loss_weight or None, propagate_down or None)
CONFIGS = {
    "ssd_max_negative": ({}, "normalization: VALID", None, None),
    "bipartite": ({"match_type": "BIPARTITE"}, "normalization: VALID", None, None),
    "mining_none": ({"mining_type": "NONE"}, "normalization: VALID", None, None),
    "hard_example_nms": ({"mining_type": "HARD_EXAMPLE", "sample_size": "12",
                          "nms_param": "{ nms_threshold: 0.5 top_k: 40 }"}, "normalization: VALID", None, None),
    "hard_example_sorted": ({"mining_type": "HARD_EXAMPLE", "sample_size": "10"}, "normalization: VALID", None, None),
    "hard_example_prior_nms_l2": ({"mining_type": "HARD_EXAMPLE", "sample_size": "12", "use_prior_for_nms": "true",
                                   "loc_loss_type": "L2", "nms_param": "{ nms_threshold: 0.4 top_k: 40 }"},
                                  "normalization: VALID", None, None),
    # nms_param without top_k: top_k 0, so GetTopKScoreIndex keeps nothing and no example is selected
    "hard_example_nms_no_top_k": ({"mining_type": "HARD_EXAMPLE", "nms_param": "{ nms_threshold: 0.5 }"},
                                  "normalization: VALID", None, None),
    "logistic_max_negative": ({"conf_loss_type": "LOGISTIC"}, "normalization: VALID", None, None),
    "logistic_none": ({"conf_loss_type": "LOGISTIC", "mining_type": "NONE"}, "normalization: VALID", None, None),
    "logistic_background_2_none": ({"conf_loss_type": "LOGISTIC", "mining_type": "NONE",
                                    "background_label_id": "2"}, "normalization: VALID", None, None),
    "softmax_background_2": ({"background_label_id": "2"}, "normalization: VALID", None, None),
    "l2": ({"loc_loss_type": "L2"}, "normalization: VALID", None, None),
    "norm_full": ({}, "normalization: FULL", None, None),
    "norm_batch_size": ({}, "normalization: BATCH_SIZE", None, None),
    "norm_none": ({}, "normalization: NONE", None, None),
    "legacy_normalize_false": ({}, "normalize: false", None, None),
    "legacy_normalize_true_none": ({"mining_type": "NONE"}, "normalize: true", None, None),
    "normalization_over_normalize": ({}, "normalization: NONE normalize: true", None, None),
    "no_share_prior_match": ({"share_location": "false", "mining_type": "NONE"}, "normalization: VALID", None,
                             None),
    "no_share_decoded_match": ({"share_location": "false", "mining_type": "NONE",
                                "use_prior_for_matching": "false"}, "normalization: VALID", None, None),
    "decoded_match": ({"use_prior_for_matching": "false", "overlap_threshold": "0.4"}, "normalization: VALID",
                      None, None),
    "encode_variance_in_target": ({"encode_variance_in_target": "true"}, "normalization: VALID", None, None),
    "corner": ({"code_type": "CORNER"}, "normalization: VALID", None, None),
    "corner_size_variance_in_target": ({"code_type": "CORNER_SIZE", "encode_variance_in_target": "true"},
                                       "normalization: VALID", None, None),
    "no_difficult_gt": ({"use_difficult_gt": "false"}, "normalization: VALID", None, None),
    "ignore_cross_boundary": ({"ignore_cross_boundary_bbox": "true", "match_type": "BIPARTITE"},
                              "normalization: VALID", None, None),
    "loss_weight": ({"loc_weight": "0.5"}, "normalization: VALID", 2.5, None),
    "do_neg_mining_legacy": ({"do_neg_mining": "true", "overlap_threshold": "0.4", "neg_overlap": "0.3",
                              "neg_pos_ratio": "2"}, "normalization: VALID", None, None),
    "propagate_down_loc_only": ({}, "normalization: VALID", None, (True, False, False, False)),
    "bp_inside_corner": ({"bp_inside": "true", "code_type": "CORNER"}, "normalization: VALID", None, None),
    "object_agnostic": ({"map_object_to_agnostic": "true", "num_classes": "2", "mining_type": "NONE"},
                        "normalization: VALID", None, None),
    # images 0 and 1 score every class 0: their negatives' losses all tie, and which of them std::sort puts first
    # (libstdc++'s introsort) decides the selection
    "max_negative_ties": ({}, "normalization: VALID", None, None),
}
TIED = ("max_negative_ties",)


def priors() -> np.ndarray:
    """1 x 2 x P*4: GRID x GRID centres, SIZES boxes each (not clipped: the border ones cross the image),
    variances 0.1 0.1 0.2 0.2."""
    boxes = []
    for y in range(GRID):
        for x in range(GRID):
            cx, cy = (x + 0.5) / GRID, (y + 0.5) / GRID
            for w, h in SIZES:
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1)
    var = np.tile(np.asarray([0.1, 0.1, 0.2, 0.2], dtype=np.float32), len(boxes) // 4)
    return np.stack([boxes, var])[None]


def ground_truth(rng, prior) -> np.ndarray:
    """1 x 1 x G x 8 rows [item, label, instance, xmin, ymin, xmax, ymax, difficult]: image 0 three boxes (one
    difficult), image 1 four, image 2 one difficult box, then one row of item -1. Each box is a prior jittered
    (so that some overlap a prior by more than 0.5), clipped to the image; labels 1 or 3 (never 0 or 2, the
    backgrounds used)."""
    boxes = prior[0, 0].reshape(-1, 4)
    rows = []
    for item, count, difficult in ((0, 3, [0, 1, 0]), (1, 4, [0, 0, 0, 0]), (2, 1, [1])):
        for k in range(count):
            b = boxes[rng.randint(len(boxes))]
            cx, cy = (b[0] + b[2]) / 2 + rng.uniform(-0.04, 0.04), (b[1] + b[3]) / 2 + rng.uniform(-0.04, 0.04)
            w, h = (b[2] - b[0]) * rng.uniform(0.8, 1.2), (b[3] - b[1]) * rng.uniform(0.8, 1.2)
            box = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0.0, 1.0)
            rows.append([item, rng.choice([1, 3]), k, *box, difficult[k]])
    rows.append([-1, -1, -1, -1, -1, -1, -1, -1])
    return np.asarray(rows, dtype=np.float32)[None, None]


def prototxt(name: str) -> str:
    changes, loss_param, loss_weight, propagate_down = CONFIGS[name]
    p = dict(BASE)
    p.update(changes)
    num_classes, loc_classes = int(p["num_classes"]), 1 if p["share_location"] == "true" else int(p["num_classes"])
    num_priors = GRID * GRID * len(SIZES)
    mbox = "\n".join(f"    {k} {v}" if v.startswith("{") else f"    {k}: {v}" for k, v in p.items())
    extra = f"  loss_weight: {loss_weight}\n" if loss_weight is not None else ""
    if propagate_down is not None:
        extra += "".join(f"  propagate_down: {str(d).lower()}\n" for d in propagate_down)
    scale = ('  param { lr_mult: 1 }\n  scale_param { axis: 0 num_axes: 0 bias_term: false '
             'filler { type: "constant" value: 1 } }\n')
    return f"""name: "multibox_{name}"
layer {{
  name: "input"
  type: "Input"
  top: "loc_in"
  top: "conf_in"
  top: "prior"
  top: "label"
  input_param {{
    shape {{ dim: {N} dim: {num_priors * loc_classes * 4} }}
    shape {{ dim: {N} dim: {num_priors * num_classes} }}
    shape {{ dim: 1 dim: 2 dim: {num_priors * 4} }}
    shape {{ dim: 1 dim: 1 dim: 9 dim: 8 }}
  }}
}}
layer {{
  name: "loc_identity"
  type: "Scale"
  bottom: "loc_in"
  top: "loc"
{scale}}}
layer {{
  name: "conf_identity"
  type: "Scale"
  bottom: "conf_in"
  top: "conf"
{scale}}}
layer {{
  name: "mbox_loss"
  type: "MultiBoxLoss"
  bottom: "loc"
  bottom: "conf"
  bottom: "prior"
  bottom: "label"
  top: "mbox_loss"
{extra}  loss_param {{ {loss_param} }}
  multibox_loss_param {{
{mbox}
  }}
}}
"""


def inputs(text: str, seed: int = 0) -> dict:
    """The same seeded inputs for every configuration (loc's width follows the configuration)."""
    rng = np.random.RandomState(seed)
    prior = priors()
    label = ground_truth(rng, prior)
    shapes = {}
    for line in text.splitlines():
        if line.strip().startswith("shape {"):
            shapes[len(shapes)] = tuple(int(t) for t in line.split()[3:-1:2])
    loc = (0.5 * rng.standard_normal(shapes[0])).astype(np.float32)
    conf = (2.0 * rng.standard_normal(shapes[1])).astype(np.float32)
    return {"loc_in": loc, "conf_in": conf, "prior": prior, "label": label}


def run_one(name: str) -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    caffe.set_mode_cpu()
    text = prototxt(name)
    data = inputs(text)
    if name in TIED:
        data["conf_in"][:2] = 0
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    try:
        net = caffe.Net(f.name, caffe.TRAIN)
    finally:
        os.unlink(f.name)
    for k, v in data.items():
        net.blobs[k].data[...] = v
    out = net.forward()
    loss = np.float32(out["mbox_loss"]).reshape(())
    net.backward()
    np.savez_compressed(os.path.join(HERE, f"{name}.npz"), prototxt=np.asarray(text), loss=loss,
                        loc_diff=net.blobs["loc"].diff.copy(), conf_diff=net.blobs["conf"].diff.copy(), **data)
    print(f"{name}: loss {float(loss):.6g}")


def main(argv) -> int:
    if len(argv) == 2:
        run_one(argv[1])
        return 0
    failed = []
    for name in CONFIGS:
        if subprocess.run([sys.executable, os.path.abspath(__file__), name]).returncode != 0:
            failed.append(name)
    if failed:
        print("failed:", " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
