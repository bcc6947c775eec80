"""How strong is SphereFace+'s InterClass term next to the A-Softmax loss? A table of gradient norms on fc6's W.

SphereFace-20's classifier as trained by the authors (N = 10572 classes, K = 512, batch M = 256, W rows unit
norm, features fc5 with |x| ~ 20) with the shipped settings: the A-Softmax loss's gradient on W against the
InterClass gradient for the fork's CPU definition (AMONG and MEAN at the shipped alphas) and for the paper's
MHE energies (``energy: "s0" | "s1" | "s2"``) at alpha = 1. The ratio says which alpha gives a term of a given
relative weight (the gradients are linear in alpha).

    python bench/interclass_scale.py [--batch 256] [--classes 10572] [--feature-norm 20]
"""
from __future__ import annotations

import argparse

import torch

from sfport.converters.modules import margin as mg
from sfport.converters.modules.loss import SoftmaxWithLoss
from sfport.protos import caffe_pb2


def measure(classes: int, dim: int, batch: int, feature_norm: float, m: int, seed: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=g)
    w /= w.norm(dim=1, keepdim=True)
    x = torch.randn(batch, dim, generator=g)
    x = x / x.norm(dim=1, keepdim=True) * feature_norm
    y = torch.randint(0, classes, (batch,), generator=g)
    fc6 = mg.MarginInnerProduct(classes, dim, 1, m, base=1000, gamma=0.12, power=1, lambda_min=5, iteration=2000)
    with torch.no_grad():
        fc6.weight.copy_(w)
    logits, _ = fc6(x, y)
    SoftmaxWithLoss(1, caffe_pb2.LossParameter.VALID, None, False)(logits, y).backward()
    softmax = float(fc6.weight.grad.norm())
    rows = [("A-Softmax loss (m=%d, lambda 5)" % m, "-", softmax, 1.0)]
    for label, among, energy, alpha in (("InterClass AMONG (fork CPU)", True, "caffe", 10.0),
                                        ("InterClass AMONG (fork CPU)", True, "caffe", 5.3),
                                        ("InterClass MEAN (fork CPU)", False, "caffe", 10.0),
                                        ("MHE s=0 (log energy)", True, "s0", 1.0),
                                        ("MHE s=1 (Riesz)", True, "s1", 1.0),
                                        ("MHE s=2 (Riesz)", True, "s2", 1.0)):
        ic = mg.InterClass(classes, dim, among, iteration=0, alpha_start_iter=1, alpha_start_value=alpha,
                           energy=energy)
        with torch.no_grad():
            ic.weight.copy_(w)
        ic(x, y).backward()
        n = float(ic.weight.grad.norm())
        rows.append((label, f"{alpha:g}", n, n / softmax))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10572)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--feature-norm", type=float, default=20.0)
    ap.add_argument("--m", type=int, default=4)
    args = ap.parse_args(argv)
    rows = measure(args.classes, args.dim, args.batch, args.feature_norm, args.m)
    print(f"N={args.classes} K={args.dim} M={args.batch} |x|={args.feature_norm:g}")
    print("| term | alpha | norm of its gradient on W | ratio to A-Softmax |")
    print("|---|---|---|---|")
    for label, alpha, n, r in rows:
        print(f"| {label} | {alpha} | {n:.3e} | {r:.3e} |")
    return rows


if __name__ == "__main__":
    main()
