"""Reading an image file as Caffe does (OpenCV's decoders, ``cv::imread`` in io.cpp ReadImageToCVMat), but safely.

Every command that reads images goes through :func:`read_image` (a file) or :func:`decode_image` (bytes, e.g. an
encoded Datum). Before anything is decoded, the file must be a regular file of at most :data:`MAX_BYTES`, and its
header (read here, for every format this OpenCV decodes: JPEG, PNG, BMP, GIF, WebP, AVIF, TIFF, JPEG 2000,
OpenEXR, Radiance HDR, PNM/PAM/PFM, Sun raster) must state a size of at most :data:`MAX_PIXELS` pixels
(``$SFPORT_MAX_IMAGE_PIXELS`` overrides it), so a 69-byte PNG claiming 100000 x 100000 pixels is refused instead
of allocating 30 GB. A JPEG whose entropy-coded data ends before its end-of-image marker is refused as truncated
(libjpeg would decode it, grey at the bottom, with only "Premature end of JPEG file" on stderr); the decoders'
own messages (OpenCV's log, libjpeg/libpng warnings on stderr) are silenced: the caller reports the problem
once, naming the file. The decoded image is exactly ``cv2.imread``'s: same flags, EXIF orientation applied.

A bad image is a :class:`sfport.errors.CaffeFileError` whose ``message`` reads as the complement of "is":
``missing``, ``a folder, not an image``, ``too large: ...``, ``truncated: ...``, ``unreadable or corrupt ...``,
``empty ...``: ``<path>: missing``, or in a list ``<list>: line 3: image '<path>' is missing``.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import sys
import threading

import numpy as np

from sfport.errors import CaffeFileError

# 2**26 pixels (8192 x 8192; any camera's photo, a 61 Mpx one included); a decoded BGR image of that size is 192 MiB
MAX_PIXELS = 1 << 26
MAX_BYTES = 1 << 30           # no image file sfport reads is bigger (a 2**26-pixel 32-bit TIFF is 256 MiB)
FORMATS = "JPEG, PNG, BMP, GIF, WebP, AVIF, TIFF, JPEG 2000, OpenEXR, HDR, PNM/PAM/PFM, Sun raster"


def max_pixels() -> int:
    """The pixel limit: ``$SFPORT_MAX_IMAGE_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    text = os.environ.get("SFPORT_MAX_IMAGE_PIXELS")
    if text is None:
        return MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise CaffeFileError(None, f"SFPORT_MAX_IMAGE_PIXELS={text!r}: not a positive number of pixels")
    return value


class _Bad(Exception):
    """An image problem, worded as the complement of 'is' ('missing', 'truncated: ...')."""


def read_image(path, color: bool | None = True, *, list_file=None, line: int | None = None) -> np.ndarray:
    """The image at ``path`` as ``cv2.imread`` gives it: ``color`` True: BGR (IMREAD_COLOR), False: grayscale
    (IMREAD_GRAYSCALE), None: as stored (IMREAD_UNCHANGED). A missing, oversized, truncated or undecodable file
    is a :class:`CaffeFileError` naming it; with ``list_file`` and ``line`` (the list that named the image), one
    naming the list and line: ``<list>: line 3: image '<path>' is <problem>``."""
    try:
        return _decode(_read_file(path), color)
    except _Bad as e:
        raise _error(path, str(e), list_file, line) from None


def read_image_or_none(path, color: bool | None = True) -> np.ndarray | None:
    """:func:`read_image`, or None for a bad image (as ``cv::imread`` returns an empty Mat: io.cpp
    ReadImageToCVMat's callers skip or fail on it)."""
    try:
        return read_image(path, color)
    except CaffeFileError:
        return None


def decode_image(data: bytes, path, color: bool | None = True, *, where: str = "") -> np.ndarray:
    """Image bytes (``cv::imdecode``, as Caffe's DecodeDatumToCVMat) with :func:`read_image`'s checks; a bad
    image is a :class:`CaffeFileError` on ``path`` (the file holding the bytes), ``<where>: the encoded image
    cannot be decoded (<problem>)``."""
    try:
        if len(data) > MAX_BYTES:
            raise _Bad(f"too large: {len(data)} bytes (sfport reads images of at most {MAX_BYTES} bytes)")
        return _decode(bytes(data), color)
    except _Bad as e:
        prefix = f"{where}: " if where else ""
        raise CaffeFileError(path, f"{prefix}the encoded image cannot be decoded ({e})") from None


# ---------------------------------------------------------------------------------------------------------
# reading and decoding
# ---------------------------------------------------------------------------------------------------------

def _error(path, problem: str, list_file, line) -> CaffeFileError:
    if list_file is not None:
        return CaffeFileError(list_file, f"line {line}: image '{os.fspath(path)}' is {problem}")
    return CaffeFileError(path, problem)


def _read_file(path) -> bytes:
    """The file's bytes: a regular file of at most MAX_BYTES (a folder, a device or a pipe is refused before it
    is opened, so nothing blocks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Bad("missing") from None
    except NotADirectoryError:
        raise _Bad("missing (a folder on its path is a file)") from None
    except (OSError, ValueError) as e:
        raise _Bad(f"unreadable ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _Bad("a folder, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise _Bad("not a regular file (a device, pipe or socket), not an image")
    if st.st_size > MAX_BYTES:
        raise _Bad(f"too large: {st.st_size} bytes (sfport reads images of at most {MAX_BYTES} bytes)")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BYTES + 1)
    except OSError as e:
        raise _Bad(f"unreadable ({e.strerror or e})") from None


def _header(data: bytes) -> tuple[str, int, int]:
    head = data[:16]
    for test, reader in _READERS:
        if test(head):
            return reader(data)
    raise _Bad(f"unreadable or corrupt: not in any image format sfport reads ({FORMATS})")


def _decode(data: bytes, color: bool | None) -> np.ndarray:
    if not data:
        raise _Bad("empty (0 bytes), not an image")
    fmt, w, h = _header(data)
    if w <= 0 or h <= 0:
        raise _Bad(f"unreadable or corrupt (its {fmt} header gives a size of {w} x {h} pixels)")
    limit = max_pixels()
    if w * h > limit:
        raise _Bad(f"too large: its {fmt} header claims {w} x {h} pixels, over the limit of {limit} "
                   f"(SFPORT_MAX_IMAGE_PIXELS)")
    import cv2  # noqa: PLC0415 - OpenCV loads with the first image, not with every command
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE if color is not None else cv2.IMREAD_UNCHANGED
    with _quiet(cv2):
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)  # io.cpp ReadImageToCVMat: cv::imread(flag)
        except cv2.error as e:
            first = next((s.strip() for s in str(e).splitlines() if s.strip()), "")
            raise _Bad(f"unreadable or corrupt ({fmt}: {first[-120:]})") from None
    if img is None or img.size == 0:
        raise _Bad(f"unreadable or corrupt (OpenCV cannot decode this {fmt} file)")
    if (color and (img.ndim != 3 or img.shape[2] != 3)) or (color is False and img.ndim != 2):
        # cv::imread gives no image then (its check that the decoder filled the Mat it was given fails)
        raise _Bad(f"unreadable or corrupt (OpenCV decodes this {fmt} file to a {list(img.shape)} image)")
    return img


_QUIET = threading.Lock()


@contextlib.contextmanager
def _quiet(cv2):
    """OpenCV's log off and stderr (file descriptor 2, where libjpeg and libpng write their warnings) sent to
    /dev/null while an image decodes: sfport reports a bad image itself, once."""
    with _QUIET:
        logging = getattr(getattr(cv2, "utils", None), "logging", None)
        level = None
        if logging is not None:
            level = logging.getLogLevel()
            logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        saved = None
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except (OSError, ValueError, AttributeError):  # no fd 2 (embedded interpreters): nothing to silence
            saved = None
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            if level is not None:
                logging.setLogLevel(level)


# ---------------------------------------------------------------------------------------------------------
# headers: (format, width, height) of every format OpenCV 4 decodes, read without decoding
# ---------------------------------------------------------------------------------------------------------

def _u(data: bytes, fmt: str, at: int, what: str):
    try:
        return struct.unpack_from(fmt, data, at)[0]
    except struct.error:
        raise _Bad(f"truncated: the file ends inside its {what} header") from None


# SOF0-3, 5-7, 9-11, 13-15 (not DHT C4, JPG C8, DAC CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# what may follow a scan: tables (DHT, DAC, DQT, DRI), DNL, comments, APPn, the next scan (SOS); EOI is handled first
_BETWEEN_SCANS = {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)}
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")   # a marker after entropy-coded data (not a stuffed 0xFF00/RSTn)


def _jpeg(data: bytes):
    """Walk the JPEG's segments (by their lengths) and scans (to the next marker) to the end-of-image marker
    EOI; the size is the first frame header's. Data after EOI (padding, a Motion Photo's video) is ignored, as
    libjpeg ignores it; no EOI means the file was cut (libjpeg's jdmarker.c/jdhuff.c then warn "Premature end
    of JPEG file" and fill the rest of the image with grey)."""
    n = len(data)
    pos, size, scanned = 2, None, False
    while True:
        ff = data.find(b"\xff", pos)    # libjpeg skips stray bytes before a marker (next_marker)
        if ff < 0 or ff + 1 >= n:
            break
        pos = ff + 1
        while pos < n and data[pos] == 0xFF:   # fill bytes
            pos += 1
        if pos >= n:
            break
        m = data[pos]
        pos += 1
        if m == 0xD9:                      # EOI
            if size is None:
                raise _Bad("unreadable or corrupt (a JPEG without a frame header)")
            return ("JPEG",) + size
        if m == 0x00 or m == 0x01 or 0xD0 <= m <= 0xD8:  # a stray stuffed 0xFF00; TEM, RSTn, SOI (no length)
            continue
        if m < 0xC0:   # reserved (jdmarker.c read_markers: JERR_UNKNOWN_MARKER); in a scan, libjpeg stops there
            raise _Bad(f"unreadable or corrupt (an invalid JPEG marker 0xFF{m:02X} at byte {ff})")
        if scanned and m not in _BETWEEN_SCANS:   # libjpeg stops decoding the scan there: the rest is grey
            raise _Bad(f"unreadable or corrupt (a JPEG marker 0xFF{m:02X} inside its image data, at byte {ff})")
        length = _u(data, ">H", pos, "JPEG")
        if length < 2:
            raise _Bad(f"unreadable or corrupt (a JPEG segment 0xFF{m:02X} of length {length})")
        if m in _SOF and size is None:
            h, w = _u(data, ">H", pos + 3, "JPEG frame"), _u(data, ">H", pos + 5, "JPEG frame")
            size = (w, h)
        pos += length
        if m == 0xDA:                      # SOS: entropy-coded data up to the next marker
            if size is None:
                raise _Bad("unreadable or corrupt (a JPEG scan before its frame header)")
            scanned = True
            found = _MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    if size is None:
        raise _Bad("truncated: a JPEG that ends before its frame header")
    raise _Bad("truncated: the JPEG data ends before its end-of-image marker (FFD9); libjpeg would decode "
               "it with a grey bottom (\"Premature end of JPEG file\")")


def _png(data: bytes):
    if data[12:16] != b"IHDR":
        raise _Bad("unreadable or corrupt (a PNG without its IHDR header)")
    return "PNG", _u(data, ">I", 16, "PNG"), _u(data, ">I", 20, "PNG")


def _bmp(data: bytes):
    dib = _u(data, "<I", 14, "BMP")
    if dib == 12:   # OS/2 BITMAPCOREHEADER
        return "BMP", _u(data, "<H", 18, "BMP"), _u(data, "<H", 20, "BMP")
    return "BMP", _u(data, "<i", 18, "BMP"), abs(_u(data, "<i", 22, "BMP"))   # negative height: top-down


def _gif(data: bytes):
    return "GIF", _u(data, "<H", 6, "GIF"), _u(data, "<H", 8, "GIF")


def _webp(data: bytes):
    kind = data[12:16]
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Bad("unreadable or corrupt (a WebP VP8 frame without its start code)")
        return "WebP", _u(data, "<H", 26, "WebP") & 0x3FFF, _u(data, "<H", 28, "WebP") & 0x3FFF
    if kind == b"VP8L":
        bits = _u(data, "<I", 21, "WebP")
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        if len(data) < 30:
            raise _Bad("truncated: the file ends inside its WebP header")
        return "WebP", int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise _Bad("unreadable or corrupt (a WebP file without a VP8/VP8L/VP8X chunk)")


def _tiff(data: bytes):
    e = "<" if data[:2] == b"II" else ">"
    big = _u(data, e + "H", 2, "TIFF") == 43
    if big:   # BigTIFF: 8-byte offsets and counts, 20-byte entries
        at, count_fmt, entry, val_at = _u(data, e + "Q", 8, "TIFF"), "Q", 20, 12
    else:
        at, count_fmt, entry, val_at = _u(data, e + "I", 4, "TIFF"), "H", 12, 8
    count = _u(data, e + count_fmt, at, "TIFF")
    first = at + struct.calcsize(count_fmt)
    if first + count * entry > len(data):
        raise _Bad("truncated: the file ends inside its TIFF directory")
    found = {}
    for k in range(count):
        p = first + k * entry
        tag, typ = struct.unpack_from(e + "HH", data, p)
        if tag in (256, 257):   # ImageWidth, ImageLength: SHORT, LONG or LONG8
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                raise _Bad(f"unreadable or corrupt (TIFF tag {tag} of type {typ})")
            found[tag] = struct.unpack_from(e + fmt, data, p + val_at)[0]
    if 256 not in found or 257 not in found:
        raise _Bad("unreadable or corrupt (a TIFF directory without the image's width and height)")
    return "TIFF", found[256], found[257]


def _jp2(data: bytes):
    if data[:4] == b"\xff\x4f\xff\x51":   # a bare JPEG 2000 codestream: SOC, then SIZ
        x, y = _u(data, ">I", 8, "JPEG 2000"), _u(data, ">I", 12, "JPEG 2000")
        x0, y0 = _u(data, ">I", 16, "JPEG 2000"), _u(data, ">I", 20, "JPEG 2000")
        return "JPEG 2000", x - x0, y - y0
    at = 0
    while at + 8 <= len(data):     # JP2 boxes: length, type; the header box jp2h holds ihdr (height, width)
        length, kind = struct.unpack_from(">I4s", data, at)
        body = at + 8
        if length == 1:
            length, body = _u(data, ">Q", at + 8, "JPEG 2000"), at + 16
        elif length == 0:
            length = len(data) - at
        if length < body - at:
            break
        if kind == b"jp2h":
            at = body
            continue
        if kind == b"ihdr":
            return "JPEG 2000", _u(data, ">I", body + 4, "JPEG 2000"), _u(data, ">I", body, "JPEG 2000")
        at += length
    raise _Bad("unreadable or corrupt (a JP2 file without its image header box)")


def _exr(data: bytes):
    at = 8
    while at < len(data):           # attributes: name\0 type\0 size value; the header ends with an empty name
        end = data.find(b"\0", at, at + 256)
        if end < 0:
            break
        name = data[at:end]
        if not name:
            break
        tend = data.find(b"\0", end + 1, end + 257)
        if tend < 0:
            break
        size = _u(data, "<i", tend + 1, "OpenEXR")
        value = tend + 5
        if name == b"dataWindow":
            x0, y0, x1, y1 = (_u(data, "<i", value + 4 * k, "OpenEXR") for k in range(4))
            return "OpenEXR", x1 - x0 + 1, y1 - y0 + 1
        if size < 0:
            break
        at = value + size
    raise _Bad("unreadable or corrupt (an OpenEXR header without its dataWindow)")


def _hdr(data: bytes):
    head = data[:65536]
    end = head.find(b"\n\n")
    if end < 0:
        raise _Bad("truncated: the file ends inside its Radiance HDR header")
    line = head[end + 2:].split(b"\n", 1)[0].split()
    if len(line) != 4:
        raise _Bad("unreadable or corrupt (a Radiance HDR file without its resolution line)")
    try:
        dims = {line[0][1:2]: int(line[1]), line[2][1:2]: int(line[3])}
    except ValueError:
        raise _Bad("unreadable or corrupt (a Radiance HDR resolution line that is not numbers)") from None
    if set(dims) != {b"X", b"Y"}:
        raise _Bad("unreadable or corrupt (a Radiance HDR resolution line without X and Y)")
    return "HDR", dims[b"X"], dims[b"Y"]


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*([^\s#]+)")


def _pnm(data: bytes):
    head = data[:4096]
    if head[:2] == b"P7":     # PAM: WIDTH / HEIGHT lines up to ENDHDR
        fields = dict(ln.split(None, 1) for ln in head.split(b"\n") if len(ln.split(None, 1)) == 2)
        try:
            return "PAM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            raise _Bad("unreadable or corrupt (a PAM header without WIDTH and HEIGHT)") from None
    tokens = []
    pos = 2
    while len(tokens) < 2:
        m = _PNM_TOKEN.match(head, pos)
        if m is None:
            raise _Bad("truncated: the file ends inside its PNM header")
        tokens.append(m.group(1))
        pos = m.end()
    try:
        return ("PFM" if head[:2] in (b"PF", b"Pf") else "PNM"), int(tokens[0]), int(tokens[1])
    except ValueError:
        raise _Bad("unreadable or corrupt (a PNM header whose width and height are not numbers)") from None


def _sunras(data: bytes):
    return "Sun raster", _u(data, ">I", 4, "Sun raster"), _u(data, ">I", 8, "Sun raster")


def _avif(data: bytes):
    best = None   # the largest 'ispe' (image spatial extents) property: the primary image, or a grid's canvas
    at = data.find(b"ispe")
    while at >= 4:
        if _u(data, ">I", at - 4, "AVIF") == 20:
            w, h = _u(data, ">I", at + 8, "AVIF"), _u(data, ">I", at + 12, "AVIF")
            if best is None or w * h > best[0] * best[1]:
                best = (w, h)
        at = data.find(b"ispe", at + 4)
    if best is None:
        raise _Bad("unreadable or corrupt (an AVIF file without its image size property)")
    return ("AVIF",) + best


def _is_avif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"mif1", b"msf1")


_READERS = [
    (lambda h: h[:3] == b"\xff\xd8\xff", _jpeg),
    (lambda h: h[:8] == b"\x89PNG\r\n\x1a\n", _png),
    (lambda h: h[:2] == b"BM", _bmp),
    (lambda h: h[:6] in (b"GIF87a", b"GIF89a"), _gif),
    (lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", _webp),
    (lambda h: h[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), _tiff),
    (lambda h: h[:12] == b"\0\0\0\x0cjP  \r\n\x87\n" or h[:4] == b"\xff\x4f\xff\x51", _jp2),
    (lambda h: h[:4] == b"\x76\x2f\x31\x01", _exr),
    (lambda h: h[:10] == b"#?RADIANCE" or h[:6] == b"#?RGBE", _hdr),
    (lambda h: len(h) >= 3 and h[:1] == b"P" and h[1:2] in b"1234567Ff" and h[2:3].isspace(), _pnm),
    (lambda h: h[:4] == b"\x59\xa6\x6a\x95", _sunras),
    (_is_avif, _avif),
]
