"""The reference data of tests/test_roi.py: ROIPooling, PSROIPooling and SmoothL1Loss as the forks compute them,
one configuration per .npz file of this folder (how and why: README.md).

Run from the repository root with the oracle's Python (it needs numpy, g++ and, for the SSD fork's SmoothL1Loss,
the oracle's ``import caffe``)::

    /tmp/oracle/venv/bin/python tests/data/roi/make_reference.py FAST_RCNN_SRC RFCN_SRC

FAST_RCNN_SRC: a checkout of rbgirshick/caffe-fast-rcnn at 4115385d (branch faster-rcnn, py-faster-rcnn's Caffe);
RFCN_SRC: a checkout of daijifeng001/caffe-rfcn at 543f8f6a (R-FCN's Caffe). Their ROIPooling backward, SmoothL1Loss
and PSROIPooling exist only as CUDA kernels (Forward_cpu / Backward_cpu are NOT_IMPLEMENTED), so the kernels'
text is taken verbatim from the .cu files and compiled for the CPU with g++: each kernel runs once per CUDA thread
index with fresh arguments (as one GPU thread does), atomicAdd becomes ``+=`` and CUDA's ``max(float, double)`` a
double max. It is compiled with ``-ffp-contract=off``: every float operation rounded as the source writes it. (nvcc's
default --fmad=true may contract ``ph * bin_size + roi_start`` into an FMA, which moves a PSROIPooling bin edge in
rare cases; which contraction a GPU build makes is the compiler's choice, so the reference is the source's
arithmetic. The script also builds the kernels with g++'s contraction and prints the cases whose values it moves.)
The host glue of each Forward_gpu / Backward_gpu (subtract, multiply, dot, scale) is written below after those
functions, line by line. The SSD fork's SmoothL1Loss (2 bottoms, no sigma) runs in the oracle's pycaffe itself
(its Forward_cpu / Backward_cpu), each configuration in a subprocess (a failed CHECK aborts it).
"""
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# ------------------------------------------------------------------------------------------ the kernels on the host

PRELUDE = r"""
#include <algorithm>
#include <cfloat>
#include <cmath>
using std::abs; using std::ceil; using std::floor; using std::max; using std::min; using std::round;
// CUDA's device overload max(float, double) (psroi_pooling_layer.cu: max(roi_end_w - roi_start_w, 0.1))
static inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
static int kernel_thread;   // the index the one "thread" of a call runs
#define __global__ static
#define CUDA_KERNEL_LOOP(i, n) for (int i = kernel_thread; i == kernel_thread && i < (n); ++i)
template <typename Dtype> static inline void caffe_gpu_atomic_add(const Dtype val, Dtype* address) {
  *address += val;
}
namespace caffe {
"""

GLUE = r"""
}  // namespace caffe
#define LAUNCH(count, call) for (kernel_thread = 0; kernel_thread < (count); ++kernel_thread) { call; }
extern "C" {
// ROIPoolingLayer::Forward_gpu / Backward_gpu (roi_pooling_layer.cu)
void roi_forward(int count, const float* x, float scale, int c, int h, int w, int ph, int pw, const float* rois,
                 float* top, int* argmax) {
  LAUNCH(count, caffe::ROIPoolForward<float>(count, x, scale, c, h, w, ph, pw, rois, top, argmax));
}
void roi_backward(int count, const float* top_diff, const int* argmax, int num_rois, float scale, int c, int h,
                  int w, int ph, int pw, float* bottom_diff, const float* rois) {
  for (int i = 0; i < count; ++i) bottom_diff[i] = 0.f;   // caffe_gpu_set(count, Dtype(0.), bottom_diff)
  LAUNCH(count, caffe::ROIPoolBackward<float>(count, top_diff, argmax, num_rois, scale, c, h, w, ph, pw,
                                               bottom_diff, rois));
}
// PSROIPoolingLayer::Forward_gpu / Backward_gpu (psroi_pooling_layer.cu)
void psroi_forward(int count, const float* x, float scale, int c, int h, int w, int ph, int pw, const float* rois,
                   int output_dim, int group_size, float* top, int* mapping) {
  for (int i = 0; i < count; ++i) { top[i] = 0.f; mapping[i] = -1; }
  LAUNCH(count, caffe::PSROIPoolingForward<float>(count, x, scale, c, h, w, ph, pw, rois, output_dim, group_size,
                                                   top, mapping));
}
void psroi_backward(int count, const float* top_diff, const int* mapping, int num_rois, float scale, int c, int h,
                    int w, int ph, int pw, int output_dim, float* bottom_diff, int bottom_count, const float* rois) {
  for (int i = 0; i < bottom_count; ++i) bottom_diff[i] = 0.f;
  LAUNCH(count, caffe::PSROIPoolingBackwardAtomic<float>(count, top_diff, mapping, num_rois, scale, c, h, w, ph, pw,
                                                          output_dim, bottom_diff, rois));
}
// SmoothL1LossLayer::Forward_gpu (smooth_L1_loss_layer.cu of caffe-fast-rcnn): d := w_in * (b0 - b1),
// e := w_out * SmoothL1(d), loss := dot(ones, e) / num; diff keeps d for Backward_gpu.
float sl1_forward(int count, int num, const float* b0, const float* b1, const float* w_in, const float* w_out,
                  float sigma2, float* diff, float* errors) {
  for (int i = 0; i < count; ++i) diff[i] = b0[i] - b1[i];
  if (w_in) for (int i = 0; i < count; ++i) diff[i] = w_in[i] * diff[i];
  LAUNCH(count, caffe::SmoothL1Forward<float>(count, diff, errors, sigma2));
  if (w_out) for (int i = 0; i < count; ++i) errors[i] = w_out[i] * errors[i];
  float loss = 0.f;
  for (int i = 0; i < count; ++i) loss += 1.f * errors[i];
  return loss / num;
}
// SmoothL1LossLayer::Backward_gpu: diff := SmoothL1'(diff); bottom[i] := alpha * diff (* w_in * w_out)
void sl1_backward(int count, int num, float* diff, float top_diff, float sigma2, const float* w_in,
                  const float* w_out, float* d0, float* d1) {
  LAUNCH(count, caffe::SmoothL1Backward<float>(count, diff, diff, sigma2));
  float* out[2] = {d0, d1};
  for (int k = 0; k < 2; ++k) {
    const float sign = (k == 0) ? 1 : -1;
    const float alpha = sign * top_diff / num;
    for (int i = 0; i < count; ++i) out[k][i] = alpha * diff[i];
    if (w_in) {
      for (int i = 0; i < count; ++i) out[k][i] = w_in[i] * out[k][i];
      for (int i = 0; i < count; ++i) out[k][i] = w_out[i] * out[k][i];
    }
  }
}
}
"""


def kernel(path: str, name: str) -> str:
    """The text of the kernel template ``name`` in the .cu file ``path``, from its ``template`` line to its
    closing brace."""
    text = open(path).read()
    at = text.index(f"__global__ void {name}(")
    start = text.rindex("template", 0, at)
    depth, i = 0, text.index("{", at)
    while True:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1] + "\n"
        i += 1


def build_library(fast_rcnn: str, rfcn: str, out_dir: str, fma: bool = True):
    layers = lambda root, f: os.path.join(root, "src", "caffe", "layers", f)  # noqa: E731
    parts = [kernel(layers(fast_rcnn, "roi_pooling_layer.cu"), "ROIPoolForward"),
             kernel(layers(fast_rcnn, "roi_pooling_layer.cu"), "ROIPoolBackward"),
             kernel(layers(rfcn, "psroi_pooling_layer.cu"), "PSROIPoolingForward"),
             kernel(layers(rfcn, "psroi_pooling_layer.cu"), "PSROIPoolingBackwardAtomic"),
             kernel(layers(fast_rcnn, "smooth_L1_loss_layer.cu"), "SmoothL1Forward"),
             kernel(layers(fast_rcnn, "smooth_L1_loss_layer.cu"), "SmoothL1Backward")]
    src = os.path.join(out_dir, f"kernels_{int(fma)}.cpp")
    lib = os.path.join(out_dir, f"kernels_{int(fma)}.so")
    with open(src, "w") as f:
        f.write(PRELUDE + "".join(parts) + GLUE)
    flags = ["-mfma", "-ffp-contract=fast"] if fma else ["-ffp-contract=off"]
    subprocess.run(["g++", "-O2", "-std=c++11", "-shared", "-fPIC", *flags, src, "-o", lib], check=True)
    return ctypes.CDLL(lib)


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p) if a is not None else None


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


# ------------------------------------------------------------------------------------------ the inputs

def rois_for(rng, num, img_h, img_w, extra=()):
    """Image-coordinate rois ``[batch, x1, y1, x2, y2]`` over an image of img_h x img_w: the whole image, random
    boxes of several sizes, a 1-pixel box, degenerate boxes (x2 < x1, y2 < y1), boxes partly and wholly outside
    the image on every side; batch indices 0 .. num-1 (one written 0.7: truncated to 0)."""
    rows = [[0, 0, 0, img_w - 1, img_h - 1], [num - 1, 0, 0, img_w - 1, img_h - 1]]
    for k in range(10):
        w, h = rng.uniform(4, img_w * 0.8), rng.uniform(4, img_h * 0.8)
        x, y = rng.uniform(0, img_w - w), rng.uniform(0, img_h - h)
        rows.append([k % num, x, y, x + w, y + h])
    rows += [[0, 10.2, 12.7, 10.2, 12.7],                                    # one pixel
             [num - 1, 30.0, 20.0, 5.0, 2.0],                                  # x2 < x1, y2 < y1
             [0, -40.3, -25.1, img_w * 0.4, img_h * 0.5],                      # over the top-left corner
             [num - 1, img_w * 0.6, img_h * 0.3, img_w + 37.6, img_h + 20.2],  # over the bottom-right corner
             [0, img_w + 50.0, 3.0, img_w + 90.0, 40.0],                        # right of the image
             [num - 1, -90.0, -80.0, -30.0, -20.0],                            # above and left of it
             [0.7, 3.5, 4.5, img_w * 0.5 + 0.5, img_h * 0.5 - 0.5]]            # halves; batch 0.7 -> 0
    rows += [list(r) for r in extra]
    return np.asarray(rows, dtype=np.float32)


def feature(rng, shape, ties=False):
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:   # ReLU'd and coarsely quantized: bins full of zeros and equal maxima (the first one wins)
        x = np.maximum(np.round(x * 2) / 2, 0).astype(np.float32)
    return x


# name -> (pooled_h, pooled_w, spatial_scale text, data shape, extra rois, ties)
ROI = {
    "roi_vgg16_7x7": (7, 7, "0.0625", (2, 4, 9, 11), (), False),
    "roi_zf_6x6": (6, 6, "0.0625", (1, 3, 8, 10), (), False),
    "roi_2x3_scale1": (2, 3, "1", (2, 3, 7, 8), ((0, 2.5, -2.5, 5.5, 3.5), (1, -0.5, 1.5, 6.5, 4.5)), False),
    "roi_3x3_scale_1_13": (3, 3, "0.07692308", (2, 3, 10, 9), (), False),
    "roi_4x2_ties": (4, 2, "0.5", (2, 3, 9, 8), (), True),
    "roi_2x2_large_bins_ties": (2, 2, "0.125", (1, 3, 21, 26), (), True),
}
# name -> (output_dim, group_size, spatial_scale text, data shape (channels output_dim * group_size^2), extra rois)
PSROI = {
    # the extra rois end a bin at a float ph * bin_size + roi_start where an FMA and a rounded product differ
    "psroi_g3_scale16": (2, 3, "0.0625", (2, 18, 9, 11), ((0, -45, -36, 15, 15), (1, -33, 3, 15, 100))),
    "psroi_g7_scale16": (1, 7, "0.0625", (1, 49, 8, 10), ((0, -30, -48, 47, 15), (0, -32, -37, 95, 15))),
    "psroi_g2_scale1": (3, 2, "1", (2, 12, 7, 8), ((0, 2.5, -2.5, 5.5, 3.5), (1, -0.5, 1.5, -1.5, 4.5))),
    "psroi_g1_scale_1_13": (4, 1, "0.07692308", (2, 4, 10, 9), ()),
    "psroi_g7_scale_1_13": (2, 7, "0.07692308", (1, 98, 9, 9), ((0, 29, 47, 70, 88), (0, -15, 45, 38, 121))),
}
# name -> (sigma text or None, shape, with weights, top diff (the loss_weight))
SMOOTH_L1 = {
    "sl1_bbox_sigma1": (None, (6, 12), False, 1.0),
    "sl1_rpn_sigma3": ("3", (2, 12, 3, 4), False, 1.0),
    "sl1_weights_sigma1": ("1", (6, 12), True, 2.0),
    "sl1_rpn_weights_sigma3": ("3", (1, 36, 5, 6), True, 1.0),
    "sl1_weights_sigma_0_7": ("0.7", (3, 8, 2, 2), True, 0.5),
}
# the SSD fork's form (2 bottoms, no sigma), in the oracle's pycaffe: name -> (shape, loss_weight). Its third
# bottom cannot be given: the fork's SmoothL1LossLayer keeps LossLayer's ExactNumBottomBlobs() of 2.
SMOOTH_L1_SSD = {
    "sl1_ssd": ((5, 16), 1.0),
    "sl1_ssd_loss_weight": ((2, 8, 3, 3), 0.5),
}


def roi_case(lib, name, rng):
    ph, pw, scale, shape, extra, ties = ROI[name]
    x = feature(rng, shape, ties)
    n, c, h, w = shape
    rois = rois_for(rng, n, h / float(scale), w / float(scale), extra)
    r = len(rois)
    count = r * c * ph * pw
    top, argmax = np.zeros(count, np.float32), np.zeros(count, np.int32)
    lib.roi_forward(count, _p(x), ctypes.c_float(float(scale)), c, h, w, ph, pw, _p(rois), _p(top), _p(argmax))
    top_diff = _f32(rng.standard_normal((r, c, ph, pw)))
    diff = np.zeros(x.size, np.float32)
    lib.roi_backward(x.size, _p(top_diff), _p(argmax), r, ctypes.c_float(float(scale)), c, h, w, ph, pw, _p(diff),
                     _p(rois))
    layer = (f'name: "{name}" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool" '
             f'roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} spatial_scale: {scale} }}')
    return dict(layer=layer, data=x, rois=rois, top=top.reshape(r, c, ph, pw), top_diff=top_diff,
                data_diff=diff.reshape(shape))


def psroi_case(lib, name, rng):
    dim, g, scale, shape, extra = PSROI[name]
    x = feature(rng, shape)
    n, c, h, w = shape
    rois = rois_for(rng, n, h / float(scale), w / float(scale), extra)
    r = len(rois)
    count = r * dim * g * g
    top, mapping = np.zeros(count, np.float32), np.zeros(count, np.int32)
    lib.psroi_forward(count, _p(x), ctypes.c_float(float(scale)), c, h, w, g, g, _p(rois), dim, g, _p(top),
                      _p(mapping))
    top_diff = _f32(rng.standard_normal((r, dim, g, g)))
    diff = np.zeros(x.size, np.float32)
    lib.psroi_backward(count, _p(top_diff), _p(mapping), r, ctypes.c_float(float(scale)), c, h, w, g, g, dim,
                       _p(diff), x.size, _p(rois))
    layer = (f'name: "{name}" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "pool" '
             f'psroi_pooling_param {{ spatial_scale: {scale} output_dim: {dim} group_size: {g} }}')
    return dict(layer=layer, data=x, rois=rois, top=top.reshape(r, dim, g, g), top_diff=top_diff,
                data_diff=diff.reshape(shape))


def smooth_l1_inputs(rng, shape, weights, threshold):
    """pred and target about ``threshold`` apart (both branches of the loss), inside weights 0 / 1 / 0.5 / 2,
    outside weights positive, zero and one negative."""
    target = _f32(rng.standard_normal(shape))
    pred = _f32(target + rng.standard_normal(shape) * threshold * 1.5)
    out = dict(pred=pred, target=target)
    if weights:
        out["inside"] = _f32(rng.choice([0.0, 1.0, 1.0, 0.5, 2.0], size=shape))
        out["outside"] = _f32(rng.choice([0.0, 0.25, 1.0, 1.0 / 3.0, -0.5], size=shape))
    return out


def smooth_l1_case(lib, name, rng):
    sigma, shape, weights, top_diff = SMOOTH_L1[name]
    s = np.float32(float(sigma) if sigma is not None else 1.0)
    sigma2 = np.float32(s * s)                      # LayerSetUp: sigma2_ = sigma() * sigma()
    data = smooth_l1_inputs(rng, shape, weights, 1.0 / float(sigma2))
    count, num = data["pred"].size, shape[0]
    diff, errors = np.zeros(count, np.float32), np.zeros(count, np.float32)
    w_in, w_out = (data["inside"], data["outside"]) if weights else (None, None)
    lib.sl1_forward.restype = ctypes.c_float
    loss = lib.sl1_forward(count, num, _p(data["pred"]), _p(data["target"]), _p(w_in), _p(w_out),
                           ctypes.c_float(sigma2), _p(diff), _p(errors))
    d0, d1 = np.zeros(count, np.float32), np.zeros(count, np.float32)
    lib.sl1_backward(count, num, _p(diff), ctypes.c_float(top_diff), ctypes.c_float(sigma2), _p(w_in), _p(w_out),
                     _p(d0), _p(d1))
    bottoms = " ".join(f'bottom: "{b}"' for b in data)
    param = f" smooth_l1_loss_param {{ sigma: {sigma} }}" if sigma is not None else ""
    weight = f" loss_weight: {top_diff}" if top_diff != 1.0 else ""
    layer = f'name: "{name}" type: "SmoothL1Loss" {bottoms} top: "loss"{weight}{param}'
    return dict(layer=layer, top=np.float32(loss).reshape(()), top_diff=np.float32(top_diff).reshape(()),
                pred_diff=d0.reshape(shape), target_diff=d1.reshape(shape), **data)


def ssd_smooth_l1_case(name: str) -> None:
    """In a subprocess: the SSD fork's SmoothL1Loss in the oracle's pycaffe (an Input-fed net, force_backward)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    caffe.set_mode_cpu()
    shape, loss_weight = SMOOTH_L1_SSD[name]
    rng = np.random.RandomState(sum(map(ord, name)))
    data = smooth_l1_inputs(rng, shape, False, 1.0)
    dims = " ".join(f"dim: {d}" for d in shape)
    bottoms = " ".join(f'bottom: "{b}"' for b in data)
    layer = (f'name: "{name}" type: "SmoothL1Loss" {bottoms} top: "loss"'
             + (f" loss_weight: {loss_weight}" if loss_weight != 1.0 else ""))
    net_text = ('force_backward: true\nlayer { name: "in" type: "Input" '
                + " ".join(f'top: "{b}"' for b in data)
                + " input_param { " + " ".join(f"shape {{ {dims} }}" for _ in data) + " } }\n"
                + f"layer {{ {layer} }}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(net_text)
    try:
        net = caffe.Net(f.name, caffe.TRAIN)
    finally:
        os.unlink(f.name)
    for k, v in data.items():
        net.blobs[k].data[...] = v
    loss = np.float32(net.forward()["loss"]).reshape(())
    net.backward()
    np.savez_compressed(os.path.join(HERE, f"{name}.npz"), layer=np.asarray(layer), top=loss,
                        top_diff=np.float32(loss_weight).reshape(()), pred_diff=net.blobs["pred"].diff.copy(),
                        target_diff=net.blobs["target"].diff.copy(),
                        source=np.asarray("brocolli-caffe 9.0.2 pycaffe (CPU): smooth_L1_loss_layer.cpp"), **data)
    print(f"{name}: loss {float(loss):.6g}")


SOURCES = {"roi": "rbgirshick/caffe-fast-rcnn 4115385d roi_pooling_layer.cu kernels compiled for the CPU",
           "psroi": "daijifeng001/caffe-rfcn 543f8f6a psroi_pooling_layer.cu kernels compiled for the CPU",
           "sl1": "rbgirshick/caffe-fast-rcnn 4115385d smooth_L1_loss_layer.cu kernels compiled for the CPU"}


def main(argv) -> int:
    if len(argv) == 3 and argv[1] == "--ssd":
        ssd_smooth_l1_case(argv[2])
        return 0
    if len(argv) != 3:
        print(__doc__)
        return 2
    fast_rcnn, rfcn = argv[1], argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        lib, fused = build_library(fast_rcnn, rfcn, tmp, fma=False), build_library(fast_rcnn, rfcn, tmp)
        for table, make, kind in ((ROI, roi_case, "roi"), (PSROI, psroi_case, "psroi"),
                                  (SMOOTH_L1, smooth_l1_case, "sl1")):
            for name in table:
                seed = sum(map(ord, name))
                case = make(lib, name, np.random.RandomState(seed))
                again = make(fused, name, np.random.RandomState(seed))   # with g++'s FMA contraction
                same = all(np.array_equal(case[k], again[k]) for k in case if k != "layer")
                np.savez_compressed(os.path.join(HERE, f"{name}.npz"), source=np.asarray(SOURCES[kind]),
                                    **{k: (np.asarray(v) if k == "layer" else v) for k, v in case.items()})
                print(f"{name}: written" + ("" if same else " (g++'s FMA contraction would move some values)"))
    failed = [n for n in SMOOTH_L1_SSD
              if subprocess.run([sys.executable, os.path.abspath(__file__), "--ssd", n]).returncode != 0]
    if failed:
        print("failed:", " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
