"""MTCNN face detection (Zhang et al. 2016) with the real Matlab-trained Caffe models, run through sfport.

A port of ``detect_face.m`` (kpzhang93/MTCNN_face_detection_alignment, MTCNNv1 cascade det1-det3): image
pyramid from ``minsize`` and ``factor``, P-Net on every scale with per-scale NMS (0.5, Union), NMS 0.7, box
regression, squaring and truncation; R-Net on 24x24 crops (threshold, NMS 0.7, regression); O-Net on 48x48 crops
(threshold, 5 landmarks, regression, NMS 0.7 Min). The nets were trained in Matlab: their input is the RGB image
with height and width swapped, ``(x - 127.5) * 0.0078125``. Internally coordinates are Matlab's (1-based), as in
the original; ``detect`` returns 0-based boxes and landmarks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfport.runtime.backend import Runner
from sfport.errors import CaffeFileError
from sfport.runtime.net import Net


@dataclass
class Face:
    box: np.ndarray        # x1, y1, x2, y2 (0-based, inclusive corners as in MTCNN)
    score: float
    landmarks: np.ndarray  # 5 x 2 (x, y), 0-based: left eye, right eye, nose, left mouth, right mouth


def nms(boxes: np.ndarray, threshold: float, kind: str = "Union") -> np.ndarray:
    """Matlab nms.m: greedy, by ascending sort of the score taking the last; areas with +1."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=int)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s, kind="stable")
    pick = []
    while order.size:
        i = order[-1]
        pick.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if kind == "Min":
            o = inter / np.minimum(area[i], area[rest])
        else:
            o = inter / (area[i] + area[rest] - inter)
        order = rest[o <= threshold]
    return np.array(pick, dtype=int)


def rerec(b: np.ndarray) -> np.ndarray:
    b = b.copy()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2:4] = b[:, 0:2] + side[:, None]
    return b


def bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """pad() + imResample: each (1-based, integer) box cut from img with zero padding, resized to size x size."""
    import cv2
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(int)):
        tw, th = x2 - x1 + 1, y2 - y1 + 1
        if tw <= 0 or th <= 0:
            continue
        tmp = np.zeros((th, tw, 3), np.float32)
        sx1, sy1, sx2, sy2 = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        if sx2 >= sx1 and sy2 >= sy1:
            tmp[sy1 - y1:sy2 - y1 + 1, sx1 - x1:sx2 - x1 + 1] = img[sy1 - 1:sy2, sx1 - 1:sx2]
        out[k] = cv2.resize(tmp, (size, size), interpolation=cv2.INTER_LINEAR if tw < size else cv2.INTER_AREA)
    return out


class MTCNN:
    """``MTCNN(model_dir)`` with det1-det3 ``.prototxt``/``.caffemodel`` in it; ``detect(bgr_image)`` -> faces."""

    def __init__(self, model_dir, minsize: int = 20, factor: float = 0.85,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9), device: str = "cpu",
                 backend: str = "auto"):
        d = Path(model_dir)
        runners = []
        for i, shape, outputs in ((1, (1, 3, 12, 12), ["prob1", "conv4-2"]), (2, (1, 3, 24, 24), ["prob1", "conv5-2"]),
                                  (3, (1, 3, 48, 48), ["prob1", "conv6-2", "conv6-3"])):
            proto, model = d / f"det{i}.prototxt", d / f"det{i}.caffemodel"
            for f in (proto, model):
                if not f.is_file():
                    raise CaffeFileError(f, "MTCNN model file not found (the folder needs det1-det3 .prototxt and "
                                            ".caffemodel)")
            net = Net(proto, model, input_shapes=shape)
            missing = [o for o in outputs if o not in net.graph.final]
            if missing:
                raise CaffeFileError(proto, f"no blob '{missing[0]}': not an MTCNN det{i} net")
            runners.append(Runner(net, outputs, backend, device, str(model), any_size=i == 1))  # P-Net: a pyramid
        self.pnet, self.rnet, self.onet = runners
        self.backend = runners[0].backend
        self.line = "MTCNN " + runners[0].line.split(";")[0]
        self.minsize, self.factor, self.thresholds, self.device = minsize, factor, thresholds, device

    def _run(self, runner, batch: np.ndarray) -> dict[str, np.ndarray]:
        """batch: N x H x W x 3 (RGB, Matlab layout) -> outputs, fed transposed as matcaffe does."""
        return runner(np.ascontiguousarray(((batch - 127.5) * 0.0078125).transpose(0, 3, 2, 1), dtype=np.float32))

    def detect(self, bgr: np.ndarray) -> list[Face]:
        import cv2
        if bgr.ndim == 2:
            bgr = np.repeat(bgr[:, :, None], 3, axis=2)
        img = bgr[:, :, ::-1].astype(np.float32)  # RGB, as Matlab's imread
        h, w = img.shape[:2]
        t1, t2, t3 = self.thresholds
        m = 12.0 / self.minsize
        minl = min(h, w) * m
        scales = []
        k = 0
        while minl >= 12:
            scales.append(m * self.factor ** k)
            minl *= self.factor
            k += 1
        total = []
        for scale in scales:
            hs, ws = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            im = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_LINEAR)
            out = self._run(self.pnet, im[None])
            prob = out["prob1"][0, 1]       # (W', H'): first axis image x
            reg = out["conv4-2"][0]         # (4, W', H')
            jj, ii = np.nonzero(prob.T >= t1)  # Matlab find on the transposed map: column-major order
            if len(ii) == 0:
                continue
            score = prob[ii, jj]
            bb = np.column_stack([np.fix((2 * ii + 1) / scale), np.fix((2 * jj + 1) / scale),
                                  np.fix((2 * ii + 12) / scale), np.fix((2 * jj + 12) / scale), score,
                                  reg[0, ii, jj], reg[1, ii, jj], reg[2, ii, jj], reg[3, ii, jj]])
            bb = bb[nms(bb, 0.5, "Union")]
            total.append(bb)
        if not total:
            return []
        boxes = np.concatenate(total)
        boxes = boxes[nms(boxes, 0.7, "Union")]
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        boxes = np.column_stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                                 boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]])
        boxes = rerec(boxes)
        boxes[:, :4] = np.fix(boxes[:, :4])
        # stage 2
        out = self._run(self.rnet, _crops(img, boxes, 24))
        score = out["prob1"][:, 1]
        keep = score > t2
        boxes = np.column_stack([boxes[keep, :4], score[keep]])
        mv = out["conv5-2"][keep]
        if len(boxes) == 0:
            return []
        pick = nms(boxes, 0.7, "Union")
        boxes = rerec(bbreg(boxes[pick], mv[pick]))
        # stage 3
        boxes[:, :4] = np.fix(boxes[:, :4])
        out = self._run(self.onet, _crops(img, boxes, 48))
        score = out["prob1"][:, 1]
        keep = score > t3
        points = out["conv6-3"][keep]
        boxes = np.column_stack([boxes[keep, :4], score[keep]])
        mv = out["conv6-2"][keep]
        if len(boxes) == 0:
            return []
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * points[:, 0:5] + boxes[:, 0:1] - 1
        py = bh[:, None] * points[:, 5:10] + boxes[:, 1:2] - 1
        boxes = bbreg(boxes, mv)
        pick = nms(boxes, 0.7, "Min")
        faces = []
        for i in pick:  # Matlab coordinates -> 0-based
            faces.append(Face(boxes[i, :4] - 1.0, float(boxes[i, 4]), np.column_stack([px[i], py[i]]) - 1.0))
        return faces


def nearest_centre(faces: list[Face], shape) -> Face | None:
    """The face whose box centre is nearest the image centre (face_align_demo.m's choice among several)."""
    if not faces:
        return None
    h, w = shape[:2]
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    return min(faces, key=lambda f: float(np.sum(((f.box[:2] + f.box[2:4]) / 2 - c) ** 2)))
