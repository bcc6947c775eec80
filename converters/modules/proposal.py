"""The torch side of :mod:`sfport.converters.proposal`: the Proposal module (eager, TorchScript and ONNX forms of
both proposal layers)."""
from __future__ import annotations

import math

import numpy as np
import torch

from sfport.errors import CaffeFileError

from ..nms import float_threshold
from ..proposal import _Setup, sort_box
from .base import NoBlobs
from .nms import OnnxNMS, scripted_select


class Proposal(NoBlobs):
    """``forward(scores, deltas, im_info) -> rois[, scores]`` (see the module). ``scores`` N x 2A x H x W,
    ``deltas`` N x 4A x H x W, ``im_info`` rows ``[height, width, scale]``."""

    def __init__(self, setup: _Setup):
        super().__init__()
        self.setup = setup
        self.register_buffer("anchors", torch.from_numpy(setup.anchors), persistent=False)

    def _check(self, scores, deltas, im_info):
        s = self.setup
        a = s.num_anchors
        if scores.dim() != 4 or deltas.dim() != 4 or scores.shape[1] != 2 * a or deltas.shape[1] != 4 * a or \
                deltas.shape[0] != scores.shape[0] or tuple(deltas.shape[2:]) != tuple(scores.shape[2:]):
            raise CaffeFileError(None, f"layer '{s.name}': {a} anchors need scores N x {2 * a} x H x W and deltas "
                                       f"N x {4 * a} x H x W, not {list(scores.shape)} and {list(deltas.shape)}")
        rows = im_info.shape[0] if im_info.dim() else 0
        need = 3 if s.python else 2
        if not rows or im_info[0].numel() < need or (s.python and rows not in (1, scores.shape[0])):
            raise CaffeFileError(None, f"layer '{s.name}': im_info {list(im_info.shape)} must hold a row of "
                                       f"{need} values (height, width{', scale' if s.python else ''}) per image")

    def forward(self, scores, deltas, im_info):
        s = self.setup
        pre, post, thresh, min_size = s.configs["TRAIN" if (self.training and s.python) else "TEST"]
        if not torch.jit.is_tracing():
            self._check(scores, deltas, im_info)
        n, a = scores.shape[0], s.num_anchors
        h, w = scores.shape[2], scores.shape[3]
        dev = scores.device
        # proposal_layer.py: shifts (h, w order) + anchors, then bbox_transform_inv's astype(float32)
        sx = (torch.arange(w, device=dev, dtype=torch.float64) * s.stride).reshape(1, -1, 1).expand(h, w, a)
        sy = (torch.arange(h, device=dev, dtype=torch.float64) * s.stride).reshape(-1, 1, 1).expand(h, w, a)
        anchors = (self.anchors.reshape(1, 1, a, 4) + torch.stack([sx, sy, sx, sy], -1)).reshape(-1, 4).float()
        d = deltas.permute(0, 2, 3, 1).reshape(n, -1, 4).float()
        fg = scores[:, a:].permute(0, 2, 3, 1).reshape(n, -1).float()
        # bbox_transform_inv / transform_box, float32
        ax1, ay1, ax2, ay2 = anchors.unbind(-1)
        aw, ah = ax2 - ax1 + 1.0, ay2 - ay1 + 1.0
        cx, cy = ax1 + 0.5 * aw, ay1 + 0.5 * ah
        dx, dy, dw, dh = d.unbind(-1)
        pcx, pcy = dx * aw + cx, dy * ah + cy
        pw, ph = torch.exp(dw.double()).float() * aw, torch.exp(dh.double()).float() * ah
        info = im_info.reshape(im_info.shape[0], -1).float()
        if not s.python:
            info = info[:1]                          # p_img_info_cpu is not advanced over the batch
        wmax, hmax = info[:, 1:2] - 1, info[:, 0:1] - 1
        # clip_boxes: max(min(x, W - 1), 0)
        x1 = torch.clamp(torch.minimum(pcx - 0.5 * pw, wmax), min=0.0)
        y1 = torch.clamp(torch.minimum(pcy - 0.5 * ph, hmax), min=0.0)
        x2 = torch.clamp(torch.minimum(pcx + 0.5 * pw, wmax), min=0.0)
        y2 = torch.clamp(torch.minimum(pcy + 0.5 * ph, hmax), min=0.0)
        boxes = torch.stack([x1, y1, x2, y2], -1)
        ws, hs = x2 - x1 + 1, y2 - y1 + 1
        if s.python:                              # _filter_boxes(proposals, min_size * im_info[2]): removed
            least = info[:, 2:3] * min_size
            keep = (ws >= least) & (hs >= least)
            ranked = torch.where(keep, fg, torch.full_like(fg, -math.inf))
        else:                                     # transform_box(...) * score: 0 when too small
            least = torch.tensor(min_size, dtype=torch.float32, device=dev)
            ranked = ((ws >= least) & (hs >= least)).float() * fg
        if torch.onnx.is_in_onnx_export():
            order = torch.topk(ranked, ranked.shape[1], dim=1).indices
        elif s.python or torch.jit.is_tracing():
            order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
        else:
            order = torch.stack([torch.from_numpy(sort_box(r.detach().cpu().numpy(), pre)) for r in ranked]).to(dev)
        if pre > 0 or not s.python:
            order = order[:, :pre]
        k = order.shape[1]
        cand = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
        cand_scores = torch.gather(ranked, 1, order)
        limit = post if post > 0 else 2 ** 31 - 1
        floor = -float(np.finfo(np.float32).max) if s.python else None
        if torch.onnx.is_in_onnx_export():
            sel = OnnxNMS.apply(cand, cand_scores.unsqueeze(1), limit, float_threshold(thresh, s.python), floor,
                                s.python, not s.python, 1.0)
            image, pos = sel[:, 0], sel[:, 2]
        else:
            image, pos = scripted_select(cand, cand_scores, floor, thresh, s.python, not s.python, limit, 1.0)
        flat = image * k + pos
        rois = torch.cat([image.to(torch.float32).unsqueeze(1), cand.reshape(-1, 4)[flat]], 1)
        top_scores = cand_scores.reshape(-1)[flat]
        if s.ntop == 1:
            return rois
        return rois, (top_scores.unsqueeze(1) if s.python else top_scores)

