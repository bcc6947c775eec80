"""Caffe's signal handling in training (util/signal_handler.cpp, caffe.cpp's ``-sigint_effect`` and
``-sighup_effect``): a signal only records that it came; the solver asks once per iteration (after the update) and
once per test batch what was requested, ``stop`` (snapshot, then end: "Optimization stopped early.", exit status 0),
``snapshot`` (write one and go on) or ``none``. SIGTERM, what cluster schedulers send before they kill a job, is
sfport's addition and acts as SIGINT unless told otherwise.

The handler stays installed while DataLoader workers are forked, so a terminal's Ctrl-C, which reaches the whole
process group, does not kill the workers either.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from sfport.errors import CaffeFileError

EFFECTS = ("stop", "snapshot", "none")
STOP, SNAPSHOT = "stop", "snapshot"


def check_effect(option: str, effect: str) -> str:
    if effect not in EFFECTS:   # caffe.cpp GetRequestedAction: LOG(FATAL) "Invalid signal effect"
        raise CaffeFileError(None, f"{option} {effect}: invalid signal effect (give stop, snapshot or none)")
    return effect


class SignalHandler:
    """SignalHandler(SIGINT_action, SIGHUP_action) plus SIGTERM; a context manager that installs the handlers
    and puts the previous ones back. :meth:`check` is CheckForSignals: SIGHUP's effect first, then SIGINT's, then
    SIGTERM's; each signal is consumed by the check that reports it."""

    def __init__(self, sigint: str = STOP, sighup: str = SNAPSHOT, sigterm: str | None = None):
        self.effects = {signal.SIGINT: sigint, signal.SIGTERM: sigterm or sigint}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup
        self.order = [s for s in (getattr(signal, "SIGHUP", None), signal.SIGINT, signal.SIGTERM) if s is not None]
        self.got: set = set()
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.got.add(signum)

    def __enter__(self) -> "SignalHandler":
        for s in self.effects:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous.clear()

    def check(self) -> str | None:
        """The action requested since the last check (None: nothing, or only signals whose effect is none)."""
        for s in self.order:
            if s in self.got:
                self.got.discard(s)
                effect = self.effects[s]
                if effect != "none":
                    return effect
        return None


def agreed(action: str | None, world: int, device) -> str | None:
    """With several processes, every rank acts on what any rank was asked (a stop on one is a stop on all, at the
    same iteration, so none waits on the others' gradients)."""
    if world <= 1 or not dist.is_initialized():
        return action
    flags = torch.tensor([action == SNAPSHOT, action == STOP], dtype=torch.int32, device=device)
    dist.all_reduce(flags)
    return STOP if flags[1] else SNAPSHOT if flags[0] else None
