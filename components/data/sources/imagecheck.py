"""Cheap checks of encoded image bytes that need no decoding: the format's signature, the
dimensions in its header, and the end-of-file marker (or declared length).

Decoding belongs to ``clean`` (which sets aside whatever fails to decode as
``corrupt_payload``); ingest only rejects what is certain from the bytes it already holds,
so that files which are not images, truncated files and decompression bombs are named
where they came from, before anything tries to decode them.
"""

from __future__ import annotations

import struct

NOT_IMAGE = "not_an_image"
TRUNCATED = "truncated_image"
TOO_MANY_PIXELS = "image_too_large"


class Rejected(ValueError):
    def __init__(self, reason: str, **detail):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


_BE16 = struct.Struct(">H").unpack_from
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers carry the size
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])


def _be16(b: bytes, i: int) -> int:
    return _BE16(b, i)[0]


def _jpeg(data: bytes) -> tuple[int, int]:
    i, size = 2, len(data)
    while i + 9 <= size:
        if data[i] != 0xFF:
            raise Rejected(TRUNCATED, error=f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _STANDALONE:
            i += 2
        elif marker in _SOF:
            h, w = _BE16(data, i + 5)[0], _BE16(data, i + 7)[0]
            # The end-of-image marker must come after the frame header. (Inside entropy-coded
            # data 0xFF is always followed by 0x00 or a restart marker, so FF D9 there is the
            # end marker; an embedded thumbnail's FF D9 sits before the frame header.) A
            # cut-off file lacks it.
            if data.rfind(b"\xff\xd9", i) < 0:
                raise Rejected(TRUNCATED, error="JPEG has no end-of-image marker")
            return w, h
        elif marker == 0xDA:
            break
        else:
            i += 2 + _BE16(data, i + 2)[0]
    raise Rejected(TRUNCATED, error="JPEG header ends before the frame size")


def _png(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise Rejected(TRUNCATED, error="PNG header is incomplete")
    w, h = struct.unpack_from(">II", data, 16)
    if b"IEND\xaeB`\x82" not in data[-64:]:
        raise Rejected(TRUNCATED, error="PNG has no IEND chunk")
    return w, h


def _gif(data: bytes) -> tuple[int, int]:
    if len(data) < 14:
        raise Rejected(TRUNCATED, error="GIF header is incomplete")
    w, h = struct.unpack_from("<HH", data, 6)
    if b";" not in data[-16:]:
        raise Rejected(TRUNCATED, error="GIF has no trailer")
    return w, h


def _bmp(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise Rejected(TRUNCATED, error="BMP header is incomplete")
    declared, header = struct.unpack_from("<I", data, 2)[0], struct.unpack_from("<I", data, 14)[0]
    if declared > len(data):
        raise Rejected(TRUNCATED, error=f"BMP declares {declared} bytes, file has {len(data)}")
    if header == 12:
        w, h = struct.unpack_from("<HH", data, 18)
    else:
        w, h = struct.unpack_from("<ii", data, 18)
    return abs(w), abs(h)


def _webp(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise Rejected(TRUNCATED, error="WebP header is incomplete")
    declared = struct.unpack_from("<I", data, 4)[0] + 8
    if declared > len(data):
        raise Rejected(TRUNCATED, error=f"WebP declares {declared} bytes, file has {len(data)}")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack_from("<I", data, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    raise Rejected(NOT_IMAGE, error=f"unknown WebP chunk {chunk!r}")


SIGNATURES = [
    (b"\xff\xd8\xff", "jpeg", _jpeg),
    (b"\x89PNG\r\n\x1a\n", "png", _png),
    (b"GIF87a", "gif", _gif),
    (b"GIF89a", "gif", _gif),
    (b"BM", "bmp", _bmp),
]


def check_image(data: bytes, *, max_pixels: int) -> tuple[str, int, int]:
    """``(format, width, height)`` of encoded image bytes, or :class:`Rejected` with the reason."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, parse = "webp", _webp
    else:
        for magic, fmt, parse in SIGNATURES:
            if data.startswith(magic):
                break
        else:
            raise Rejected(NOT_IMAGE, error=f"no JPEG/PNG/BMP/WebP/GIF signature (starts with {data[:8]!r})")
    try:
        w, h = parse(data)
    except struct.error:
        raise Rejected(TRUNCATED, error=f"{fmt} header is incomplete") from None
    if w <= 0 or h <= 0:
        raise Rejected(TRUNCATED, error=f"{fmt} header gives a size of {w}x{h}")
    if w * h > max_pixels:
        raise Rejected(TOO_MANY_PIXELS, width=w, height=h, max_pixels=max_pixels)
    return fmt, w, h
