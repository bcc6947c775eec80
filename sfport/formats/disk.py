"""Writing any output file safely, and reading sfport's own ``.pt`` containers without executing code.

Every writer of sfport goes through :func:`atomic_write` (a temporary name beside the target, then a rename), so
a reader never sees half a file and an interrupted command leaves the old file or none. Every ``.pt`` sfport
reads back (converted nets, training snapshots' weights) goes through :func:`load_torch_file`, which unpickles with
``torch.load(weights_only=True)`` (tensors and plain containers only: no code from the file runs) and checks the
container's ``format`` tag.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from sfport.errors import CaffeFileError


DEFAULT_MAX_FILE_BYTES = 2 ** 31 - 1
ZIP_MAGIC = b"PK\x03\x04"   # a zip archive: torch.save's container, TorchScript's, .npz
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A size in bytes from '123456', '64k', '500M', '4G' or '4GiB' (powers of 1024); ValueError otherwise."""
    m = _SIZE.fullmatch(str(text).strip())
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"'{text}' is not a size in bytes (e.g. 123456, 500M, 4G)")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ")


class _Limit:
    """A size limit with its environment variable and default, changed for a run by :meth:`set` (the command
    line's option). A bad variable is reported when the limit is asked for, as one line: importing sfport must
    not fail."""

    def __init__(self, env: str, default: int, what: str):
        self.env, self.default, self.what = env, default, what
        self.given: int | None = None   # set(): this run's value; None: the variable's, or the default

    def set(self, n: int | str | None) -> None:
        """A number of bytes, a size such as '4G', or None for the variable (or the default) again; ValueError for
        anything else."""
        if isinstance(n, str):
            n = parse_size(n)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"the {self.what} size limit must be a positive number of bytes, not {n!r}")
        self.given = n

    def value(self) -> int:
        if self.given is not None:
            return self.given
        text = os.environ.get(self.env, "").strip()
        try:
            return parse_size(text) if text else self.default
        except ValueError as e:
            raise CaffeFileError(None, f"${self.env}: {e}") from None


# The largest file sfport reads (Caffe files, sfport's .pt, .npy): $SFPORT_MAX_FILE_BYTES or 2 GiB - 1.
FILE_LIMIT = _Limit("SFPORT_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES, "file")
# The largest text definition parsed (prototxt, solver): $SFPORT_MAX_TEXT_BYTES or 16 MiB (about 270,000 layers).
# Text is parsed in Python (fasttext, else protobuf's text_format), at about 0.3-0.6 s per MB on the 2-core
# machine: past the limit a file is refused in one line instead of keeping the user waiting for minutes (issue 33:
# 1,000,000 layers took over a minute).
DEFAULT_MAX_TEXT_BYTES = 16 * 2 ** 20
TEXT_LIMIT = _Limit("SFPORT_MAX_TEXT_BYTES", DEFAULT_MAX_TEXT_BYTES, "text")


def set_max_file_bytes(n: int | str | None) -> None:
    """Set the size limit of every file sfport reads (:meth:`_Limit.set`)."""
    FILE_LIMIT.set(n)


def max_file_bytes() -> int:
    """The file size limit now in force (a bad $SFPORT_MAX_FILE_BYTES is a one-line error here)."""
    return FILE_LIMIT.value()


def set_max_text_bytes(n: int | str | None) -> None:
    """Set the size limit of a text definition (:meth:`_Limit.set`)."""
    TEXT_LIMIT.set(n)


def max_text_bytes() -> int:
    """The text size limit now in force (a bad $SFPORT_MAX_TEXT_BYTES is a one-line error here)."""
    return TEXT_LIMIT.value()


def check_text_size(path, data: bytes) -> None:
    """One line naming ``path`` when the text definition ``data`` is over :func:`max_text_bytes`."""
    limit = max_text_bytes()
    if len(data) > limit:
        raise CaffeFileError(path, f"is a text definition of {len(data):,} bytes, over the {limit:,}-byte limit for "
                                   f"text (sfport parses text in Python, about half a second per MB: this one "
                                   f"would take about {max(1, round(len(data) / 2 ** 20 * 0.5))} s); raise it "
                                   f"with --max-text-size (e.g. --max-text-size {_size_above(len(data))}) or "
                                   f"$SFPORT_MAX_TEXT_BYTES")


def _size_above(n: int) -> str:
    """The smallest whole number of MiB (G past 1024 MiB) at or above ``n`` bytes, as --max-text-size takes it."""
    mib = -(-n // 2 ** 20)
    return f"{-(-mib // 1024)}G" if mib > 1024 else f"{mib}M"


def check_readable_file(path: str | os.PathLike, what: str = "file") -> int:
    """The size of ``path``, after checking, without opening it, that it is a regular file (not a folder, a
    device such as /dev/zero, or a FIFO that would never end) no larger than :func:`max_file_bytes`; else one
    line naming it (``what`` says what was expected)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CaffeFileError(path, "no such file") from None
    except NotADirectoryError:
        raise CaffeFileError(path, "no such file (a folder on its path is a file)") from None
    except PermissionError:
        raise CaffeFileError(path, "permission denied") from None
    except OSError as e:
        raise CaffeFileError(path, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CaffeFileError(path, f"is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise CaffeFileError(path, f"is not a regular file (a device, FIFO or socket), not a {what}: not read")
    limit = max_file_bytes()
    if st.st_size > limit:
        raise CaffeFileError(path, f"is {st.st_size:,} bytes, over the {limit:,}-byte limit for one input file "
                                   f"(raise it with $SFPORT_MAX_FILE_BYTES)")
    return st.st_size


def mat_file_bytes(variables: dict) -> bytes:
    """A MAT-file (v5, no compression; scipy.io.savemat, imported here only) holding ``variables``, as bytes for
    :func:`atomic_write` / :func:`write_files`: what MATLAB's ``load`` reads."""
    import io
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, do_compression=False)
    return buf.getvalue()


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


def output_format(path: str | os.PathLike, formats: tuple, what: str) -> str:
    """The format an output's extension names, one of ``formats``; else one line: "a WHAT is written as ..."."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in formats:
        raise CaffeFileError(path, f"a {what} is written as {', '.join('.' + f for f in formats)}, not "
                                   f"'{Path(path).suffix or 'no extension'}'")
    return ext


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


def load_torch_file(path: str | os.PathLike, fmt: str | tuple, what: str) -> dict:
    """The dict of an sfport ``.pt`` whose ``format`` is ``fmt`` (or one of them; ``what`` names it in errors), read with
    ``torch.load(weights_only=True)``; a missing file, a folder, a device or FIFO (refused before it is opened),
    a file over the readers' size limit (:func:`max_file_bytes`), a failed unpickling or another container
    is a :class:`CaffeFileError`."""
    import torch  # noqa: PLC0415 - not a cycle: reading Caffe files must not import torch, only .pt files need it

    if check_readable_file(path) == 0:
        raise CaffeFileError(path, f"empty file, not {what}")
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:  # torch.save's zip container (its legacy format is not sfport's)
            raise CaffeFileError(path, f"not {what}: not the zip archive torch.save writes")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CaffeFileError(path, "no such file") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input here
        text = str(e).strip()
        if text.startswith("Weights only load failed"):
            # torch's advice (weights_only=False: run the file's code) is not for sfport's files; its reason is
            # the paragraph after that advice
            reasons = [p.strip() for p in text.split("\n\n")[1:] if p.strip()
                       and not p.strip().startswith("Check the documentation")]
            first = "unpickling refused: it holds more than tensors and plain containers" + \
                (f" ({reasons[0].splitlines()[0]})" if reasons else "")
        else:
            first = (text.splitlines()[0] if text else type(e).__name__).split(". ")[0]
        raise CaffeFileError(path, f"not {what}: {first[:300]}") from None
    if not isinstance(doc, dict) or doc.get("format") not in ((fmt,) if isinstance(fmt, str) else tuple(fmt)):
        raise CaffeFileError(path, f"not {what}")
    return doc


def load_array(path: str | os.PathLike, what: str = "array", ndim: int | None = None,
               finite: bool = False) -> "np.ndarray":
    """A ``.npy`` file as a numpy array of real numbers, checked before any of it is read into memory: a regular
    file within the readers' size limit, a valid ``.npy`` header (not an ``.npz``, a pickle or an empty file)
    whose shape times item size is exactly what the file holds (a header claiming 10^12 rows is refused, not
    allocated), a real numeric dtype (no strings, objects or complex values), ``ndim`` axes when given, and
    with ``finite`` no NaN or infinity. The array is memory-mapped, read-only. Anything else: one line naming
    the file."""
    import math

    import numpy as np
    from numpy.lib import format as npy

    size = check_readable_file(path, what)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if head[:4] == ZIP_MAGIC:
                raise CaffeFileError(path, f"is a .npz archive (zip), not a .npy {what}")
            if head != b"\x93NUMPY":
                raise CaffeFileError(path, f"not a .npy file (no NumPy header): {what} expected"
                                     if size else f"empty file, not a .npy {what}")
            f.seek(0)
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise CaffeFileError(path, f".npy format version {version[0]}.{version[1]}: sfport reads 1.0 to 3.0")
            reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = reader(f, max_header_size=10000)
            offset = f.tell()
    except CaffeFileError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's header parser (a Python literal) fails in many ways on bad bytes
        raise CaffeFileError(path, f"not a valid .npy file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise CaffeFileError(path, f"not an array of real numbers: it holds {dtype} values ({what})")
    need = math.prod(shape) * dtype.itemsize
    if offset + need != size:
        raise CaffeFileError(path, f"its header says shape {list(shape)} of {dtype} ({need:,} bytes of data), but "
                                   f"the file holds {size - offset:,} bytes (truncated or corrupt)")
    if ndim is not None and len(shape) != ndim:
        raise CaffeFileError(path, f"a {len(shape)}-D array of shape {list(shape)}; {what} must be {ndim}-D")
    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C") \
        if need else np.zeros(shape, dtype)
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise CaffeFileError(path, f"holds a NaN or infinite value at {list(map(int, bad))} ({what})")
    return arr


class Staged:
    """A temporary file beside ``path`` (checked by :func:`check_output`) for output written as it is produced
    (``.tmp`` is its name); :func:`write_files` renames it to ``path`` with the others, or ``discard()``."""

    def __init__(self, path: str | os.PathLike, what: str = "output"):
        self.path = check_output(path, what)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)

    def discard(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write_files(contents: dict) -> None:
    """Write several files together ({path: bytes or a :class:`Staged` file already written}): each is checked
    (:func:`check_output`) and written to a temporary name beside it first, then all are renamed; a failure on
    the way removes the temporary files and any file already renamed, so the outputs are all new or none is
    there."""
    targets = [(check_output(p), data) for p, data in contents.items()]
    temps, done = [], []
    try:
        for p, data in targets:
            if isinstance(data, Staged):
                temps.append(data.tmp)
                with open(data.tmp, "rb+") as f:
                    os.fsync(f.fileno())
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
            temps.append(tmp)
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for (p, _), tmp in zip(targets, temps):
            os.replace(tmp, p)
            done.append(p)
    except BaseException:
        for path in [t for t in temps[len(done):]] + done:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise
