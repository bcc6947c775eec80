"""The torch side of :mod:`sfport.converters.ssd`: PriorBox and DetectionOutput as modules (DetectionOutput's
decoding in torch, its selection the family's numpy Forward_cpu, its exported form :mod:`.ssd_export`)."""
from __future__ import annotations

import torch

from sfport.errors import CaffeFileError
from sfport.protos import caffe_pb2

from ..base import export_option, in_export_form
from ..ssd import _DetSetup, _PriorSetup, finish
from . import ssd_export
from .base import NoBlobs


class PriorBox(NoBlobs):
    """``forward(feature, image) -> 1 x 2 x (H * W * num_priors * 4)``: PriorBoxLayer::Forward_cpu. Row 0 holds
    ``[xmin, ymin, xmax, ymax]`` per prior, positions row-major then priors in order; row 1 the variances.
    Computed from the bottoms' sizes with tensor operations, so an exported graph keeps a dynamic size."""

    def __init__(self, setup: _PriorSetup):
        super().__init__()
        self.img_h, self.img_w = setup.img_h, setup.img_w
        self.step_h, self.step_w = setup.step_h, setup.step_w
        self.offset, self.clip = setup.offset, setup.clip
        self.num_priors = setup.num_priors
        self.register_buffer("sizes", torch.from_numpy(setup.box_sizes()), persistent=False)
        var = setup.variance * 4 if len(setup.variance) == 1 else setup.variance
        self.register_buffer("variance", torch.tensor(var, dtype=torch.float32), persistent=False)

    def forward(self, feature, image=None):
        lh, lw = feature.shape[-2], feature.shape[-1]
        if self.img_h == 0 or self.img_w == 0:
            ih, iw = image.shape[-2], image.shape[-1]
        else:
            ih, iw = self.img_h, self.img_w
        f32 = dict(dtype=torch.float32, device=self.sizes.device)
        ihf, iwf = torch.as_tensor(ih, **f32), torch.as_tensor(iw, **f32)
        if self.step_w == 0 or self.step_h == 0:
            step_w = iwf / torch.as_tensor(lw, **f32)                 # static_cast<float>(img_width) / layer_width
            step_h = ihf / torch.as_tensor(lh, **f32)
        else:
            step_w, step_h = torch.tensor(self.step_w, **f32), torch.tensor(self.step_h, **f32)
        off = torch.tensor(self.offset, **f32)
        cx = (torch.arange(lw, **f32) + off) * step_w                 # float center_x = (w + offset_) * step_w
        cy = (torch.arange(lh, **f32) + off) * step_h
        cx = cx.reshape(1, -1, 1).expand(lh, lw, self.num_priors).double()
        cy = cy.reshape(-1, 1, 1).expand(lh, lw, self.num_priors).double()
        bw, bh = self.sizes[:, 0].double(), self.sizes[:, 1].double()
        iwd, ihd = iwf.double(), ihf.double()
        # (center_x - box_width / 2.) / img_width: double arithmetic, stored to the float top
        boxes = torch.stack([(cx - bw / 2.0) / iwd, (cy - bh / 2.0) / ihd,
                             (cx + bw / 2.0) / iwd, (cy + bh / 2.0) / ihd], dim=-1).float()
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        boxes = boxes.reshape(-1)
        var = self.variance.repeat(lh * lw * self.num_priors)
        return torch.stack([boxes, var]).unsqueeze(0)


def _decode(s: _DetSetup, loc, prior):
    """DecodeBBoxesAll / DecodeBBox in float32, clip_bbox false: ``loc`` (N, P, L, 4), ``prior`` (1, 2, P*4).
    Returns the boxes (N, P, L, 4)."""
    pb = prior[0, 0].reshape(1, -1, 1, 4)
    pv = prior[0, 1].reshape(1, -1, 1, 4)
    pxmin, pymin, pxmax, pymax = pb.unbind(-1)
    lx, ly, lx2, ly2 = loc.unbind(-1)
    if s.variance_encoded:
        v0 = v1 = v2 = v3 = None
    else:
        v0, v1, v2, v3 = pv.unbind(-1)
    mul = (lambda v, t: t) if s.variance_encoded else (lambda v, t: v * t)
    T = caffe_pb2.PriorBoxParameter
    if s.code_type == T.CORNER:
        out = [pxmin + mul(v0, lx), pymin + mul(v1, ly), pxmax + mul(v2, lx2), pymax + mul(v3, ly2)]
    elif s.code_type == T.CENTER_SIZE:
        pw, ph = pxmax - pxmin, pymax - pymin
        pcx, pcy = (pxmin + pxmax) / 2, (pymin + pymax) / 2
        cx = mul(v0, lx) * pw + pcx
        cy = mul(v1, ly) * ph + pcy
        w = torch.exp(mul(v2, lx2)) * pw
        h = torch.exp(mul(v3, ly2)) * ph
        out = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    elif s.code_type == T.CORNER_SIZE:
        pw, ph = pxmax - pxmin, pymax - pymin
        out = [pxmin + mul(v0, lx) * pw, pymin + mul(v1, ly) * ph, pxmax + mul(v2, lx2) * pw,
               pymax + mul(v3, ly2) * ph]
    else:
        raise CaffeFileError(None, f"layer '{s.name}' ({s.type}): unknown code_type {s.code_type}")
    return torch.stack(out, dim=-1)


def _check_priors(s: _DetSetup, prior) -> None:
    """DecodeBBox CHECK_GT(prior_width, 0) / (prior_height, 0) for the size-based codes."""
    if s.code_type == caffe_pb2.PriorBoxParameter.CORNER:
        return
    pb = prior[0, 0].reshape(-1, 4)
    bad = ((pb[:, 2] - pb[:, 0]) <= 0) | ((pb[:, 3] - pb[:, 1]) <= 0)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        raise CaffeFileError(None, f"layer '{s.name}' ({s.type}): prior {k} has a width or height <= 0 "
                                   f"(DecodeBBox needs positive prior sizes)")


class DetectionOutput(NoBlobs):
    """``forward(loc, conf, prior) -> 1 x 1 x K x 7`` (see :func:`_select`); ``loc`` is N x (P * L * 4),
    ``conf`` N x (P * C) (probabilities: the net's Softmax comes before), ``prior`` PriorBox's 1 x 2 x (P * 4).
    In :func:`sfport.converters.export_form`: :mod:`.ssd_export`'s rows, or the pre-NMS rows (see the module)."""

    def __init__(self, setup: _DetSetup, param_text: str = ""):
        super().__init__()
        self.setup = setup
        key = f"sfport:DetectionOutput:{setup.name}"
        why = "" if ssd_export.supported(setup) else " (nms_param.eta < 1: no standard operation adapts the threshold)"
        self._note = (f"layer '{setup.name}' (DetectionOutput) is exported before its NMS{why}: its top holds N x "
                      f"priors x (4 x {setup.num_loc_classes} + {setup.num_classes}) rows; finish with "
                      f"sfport.converters.ssd.detections(<the '{key}' metadata (ONNX) or extra file (TorchScript)>, "
                      f"rows)")
        self._metadata = {key: param_text}

    def pre_nms_form(self) -> bool:
        return bool(export_option("pre_nms")) or not ssd_export.supported(self.setup)

    @property
    def export_note(self):
        return self._note if self.pre_nms_form() else None

    @property
    def export_metadata(self):
        return self._metadata if self.pre_nms_form() else {}

    def pre_nms(self, loc, conf, prior):
        s = self.setup
        num = loc.shape[0]
        p = prior.shape[2] // 4
        boxes = _decode(s, loc.reshape(num, p, s.num_loc_classes, 4), prior)
        return torch.cat([boxes.reshape(num, p, -1), conf.reshape(num, p, s.num_classes)], dim=-1)

    def forward(self, loc, conf, prior):
        s = self.setup
        num, p = loc.shape[0], prior.shape[2] // 4
        if loc[0].numel() != p * s.num_loc_classes * 4 or conf[0].numel() != p * s.num_classes:
            raise CaffeFileError(None, f"layer '{s.name}' ({s.type}): {p} priors need {p * s.num_loc_classes * 4} "
                                       f"location and {p * s.num_classes} confidence values per image, not "
                                       f"{loc[0].numel()} and {conf[0].numel()}")
        if not torch.jit.is_tracing():
            _check_priors(s, prior)
        rows = self.pre_nms(loc, conf, prior)
        if in_export_form():
            if self.pre_nms_form():
                return rows
            boxes = rows[..., :4 * s.num_loc_classes].reshape(num, p, s.num_loc_classes, 4)
            return ssd_export.detection_rows(s, boxes, rows[..., 4 * s.num_loc_classes:])
        return torch.from_numpy(finish(s, rows.detach().cpu().numpy())).to(loc.device)

