"""What a training run is asked to do beyond the solver prototxt (the options of ``sfport train``)."""
from __future__ import annotations

from dataclasses import dataclass, field


class TrainingStopped(Exception):
    """The run stopped on a NaN/inf loss or the 87.3365 plateau (exit status 3 on the command line)."""


@dataclass
class Options:
    weights: list[str] = field(default_factory=list)
    snapshot: str | None = None
    data_root: str | None = None
    source: str | None = None         # replaces the TRAIN ImageData layer's list
    seed: int | None = None
    device: str = "cpu"
    amp: bool = False
    workers: int = 2
    skip_bad_images: bool = False
    keep_going: bool = False
    synthetic_data: bool = False
    data_shape: tuple | None = None   # (C, H, W) for --synthetic-data when the prototxt does not fix it
    max_iter: int | None = None       # override (tests, benchmarks)
    progress: bool | None = None      # None: a bar when stderr is a terminal
    channels_last: bool = False
    margin_grad: str | None = None
