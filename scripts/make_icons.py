"""Draw the PWA's icons (a white microphone on indigo) into frontend/icons/.

Only the standard library: each pixel's cover is found from signed distances to the
shapes (half a pixel either side of an edge blends), and the PNGs are written by
hand. The same script gives the same bytes, so the PWA's version moves only when
the design does. Run with `python -m scripts.make_icons`.
"""

import argparse
import logging
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.logs import setup_logging

log = logging.getLogger("make_icons")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "frontend" / "icons"

# Indigo, a little lighter at the top than at the bottom.
TOP, BOTTOM = (0x42, 0x63, 0xEB), (0x36, 0x4F, 0xC7)
WHITE = (0xFF, 0xFF, 0xFF)
# Corners of the rounded square, as a share of the side (close to what launchers use).
CORNER = 0.225
STROKE = 0.05

Rgba = tuple[int, int, int, int]
Distance = Callable[[float, float], float]


@dataclass(frozen=True)
class Icon:
    name: str
    size: int
    # Opaque to the edges: maskable icons are cut by the platform, and iOS paints
    # transparency black.
    full_bleed: bool
    # Scale of the microphone around the centre; maskable ones keep well inside the
    # central 80% circle that every mask leaves.
    scale: float


ICONS = (
    Icon("icon-192.png", 192, full_bleed=False, scale=1.0),
    Icon("icon-512.png", 512, full_bleed=False, scale=1.0),
    Icon("maskable-512.png", 512, full_bleed=True, scale=0.8),
    Icon("apple-touch-icon.png", 180, full_bleed=True, scale=1.0),
)


def rounded_box(x: float, y: float, cx: float, cy: float, hw: float, hh: float, r: float) -> float:
    """Signed distance to a box centred at (cx, cy) with half sides hw, hh and corners r."""
    qx, qy = abs(x - cx) - hw + r, abs(y - cy) - hh + r
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    return outside + min(max(qx, qy), 0.0) - r


def segment(x: float, y: float, ax: float, ay: float, bx: float, by: float, w: float) -> float:
    """Signed distance to a stroke of width w with round ends, from a to b."""
    px, py, dx, dy = x - ax, y - ay, bx - ax, by - ay
    t = max(0.0, min(1.0, (px * dx + py * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - t * dx, py - t * dy) - w / 2


def lower_arc(x: float, y: float, cx: float, cy: float, r: float, w: float) -> float:
    """Signed distance to the lower half of a circle's stroke, with round ends."""
    if y >= cy:
        return abs(math.hypot(x - cx, y - cy) - r) - w / 2
    return min(math.hypot(x - cx - r, y - cy), math.hypot(x - cx + r, y - cy)) - w / 2


def microphone(x: float, y: float) -> float:
    """Signed distance to the microphone, in a unit square with (0, 0) at the top left."""
    head = rounded_box(x, y, 0.5, 0.39, 0.11, 0.17, 0.11)
    holder = lower_arc(x, y, 0.5, 0.45, 0.19, STROKE)
    stem = segment(x, y, 0.5, 0.64, 0.5, 0.76, STROKE)
    foot = segment(x, y, 0.4, 0.76, 0.6, 0.76, STROKE)
    return min(head, holder, stem, foot)


def cover(distance: float, pixels_per_unit: float) -> float:
    return max(0.0, min(1.0, 0.5 - distance * pixels_per_unit))


def mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def draw(icon: Icon) -> list[list[Rgba]]:
    size, scale = icon.size, icon.scale
    rows: list[list[Rgba]] = []
    for j in range(size):
        y = (j + 0.5) / size
        background = mix(TOP, BOTTOM, y)
        row: list[Rgba] = []
        for i in range(size):
            x = (i + 0.5) / size
            alpha = 1.0
            if not icon.full_bleed:
                alpha = cover(rounded_box(x, y, 0.5, 0.5, 0.5, 0.5, CORNER), size)
            # The microphone in its own unit square, scaled about the centre.
            gx, gy = (x - 0.5) / scale + 0.5, (y - 0.5) / scale + 0.5
            white = cover(microphone(gx, gy), size * scale)
            r, g, b = mix(background, WHITE, white)
            row.append((r, g, b, round(alpha * 255)))
        rows.append(row)
    return rows


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png(rows: list[list[Rgba]]) -> bytes:
    """An 8-bit RGBA PNG of the rows, each row unfiltered (filter type 0)."""
    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(v for pixel in row for v in pixel) for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write the PNGs to")
    args = parser.parse_args()
    setup_logging("INFO")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for icon in ICONS:
        data = png(draw(icon))
        (out / icon.name).write_bytes(data)
        log.info("%s: %dx%d, %d bytes", out / icon.name, icon.size, icon.size, len(data))


if __name__ == "__main__":
    main()
