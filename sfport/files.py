"""Writing any output file safely, and reading sfport's own ``.pt`` containers without executing code.

Every writer of sfport goes through :func:`atomic_write` (a temporary name beside the target, then a rename), so
a reader never sees half a file and an interrupted command leaves the old file or none. Every ``.pt`` sfport
reads back (converted nets, training checkpoints) goes through :func:`load_torch_file`, which unpickles with
``torch.load(weights_only=True)`` (tensors and plain containers only: no code from the file runs) and checks the
container's ``format`` tag.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sfport.errors import CaffeFileError


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    p = check_output(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the user's usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail early, before any work, when ``path`` cannot be written: it is a folder, a folder on its way is a
    file, or the nearest existing folder is not writable (probed with a temporary file, so read-only mounts and
    permissions count as the OS sees them). Creates nothing that stays."""
    p = Path(path)
    if p.is_dir():
        raise CaffeFileError(p, f"{what} is a folder, not a file")
    parent = p.parent
    while not parent.exists():
        if parent.is_symlink():
            raise CaffeFileError(p, f"cannot write {what}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise CaffeFileError(p, f"cannot write {what}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise CaffeFileError(p, f"cannot write {what} in {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)
    return p


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_torch_file(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """The dict of an sfport ``.pt`` whose ``format`` is ``fmt`` (``what`` names it in errors), read with
    ``torch.load(weights_only=True)``; a missing file, a failed unpickling or another container is a
    :class:`CaffeFileError`."""
    import torch  # noqa: PLC0415 - not a cycle: reading Caffe files must not import torch, only .pt files need it

    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CaffeFileError(path, "no such file") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input here
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CaffeFileError(path, f"not {what}: {first}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise CaffeFileError(path, f"not {what}")
    return doc
