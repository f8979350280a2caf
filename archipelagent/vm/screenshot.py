"""Console screenshots → PNG, with an optional thumbnail; pure Python.

QEMU hands libvirt either a binary PPM (older QEMU) or a PNG (7.1+); both
are decoded to RGB so a thumbnail can be made, then re-encoded as PNG.

Kept dependency-free: a screenshot is at most a few MB and encoding runs in
a worker thread, never on the event loop.
"""
from __future__ import annotations

import struct
import zlib


def parse_ppm(data: bytes) -> tuple[int, int, bytes]:
    """Binary P6 PPM, maxval 255 → (width, height, RGB bytes)."""
    if not data.startswith(b"P6"):
        raise ValueError("not a binary PPM image")
    fields: list[bytes] = []
    pos = 2
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        start = pos
        while not data[pos:pos + 1].isspace():
            pos += 1
        fields.append(data[start:pos])
    width, height, maxval = (int(f) for f in fields)
    if maxval != 255:
        raise ValueError(f"unsupported PPM maxval {maxval}")
    pixels = data[pos + 1: pos + 1 + width * height * 3]
    if len(pixels) != width * height * 3:
        raise ValueError("truncated PPM image")
    return width, height, pixels


def scale(width: int, height: int, rgb: bytes, max_width: int) -> tuple[int, int, bytes]:
    """Nearest-neighbour downscale to at most ``max_width`` pixels wide."""
    if width <= max_width:
        return width, height, rgb
    new_w = max_width
    new_h = max(1, height * new_w // width)
    out = bytearray()
    for y in range(new_h):
        row = (y * height // new_h) * width * 3
        for x in range(new_w):
            offset = row + (x * width // new_w) * 3
            out += rgb[offset:offset + 3]
    return new_w, new_h, bytes(out)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """8-bit RGB/RGBA non-interlaced PNG (what QEMU writes) → (width, height, RGB bytes)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG image")
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _c, _f, interlace = header
    if depth != 8 or color not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {color}, interlace {interlace})")
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    prev = bytearray(stride)
    out = bytearray()
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = prev[i]
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif ftype == 4:
                line[i] = (line[i] + _paeth(left, up, prev[i - bpp] if i >= bpp else 0)) & 0xFF
        out += line if bpp == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3)
        prev = line
    return width, height, bytes(out)


def ppm_to_png(data: bytes, max_width: int | None = None) -> tuple[int, int, bytes]:
    """Any screenshot libvirt gives (PPM or PNG) → (width, height, PNG bytes)."""
    if data.startswith(PNG_SIGNATURE):
        if not max_width:
            width, height = struct.unpack(">II", data[16:24])
            return width, height, data
        width, height, rgb = parse_png(data)
    else:
        width, height, rgb = parse_ppm(data)
    if max_width:
        width, height, rgb = scale(width, height, rgb, max_width)
    return width, height, encode_png(width, height, rgb)
