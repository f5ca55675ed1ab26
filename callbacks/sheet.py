"""A picture laid out in pixels: image cells placed exactly, text, colour bars; text drawn by matplotlib's Agg.

The pictures are mosaics of small images that must stay sharp (every input pixel an
integer block of screen pixels), so nothing here goes through axes, ticks or layout
engines: images are upscaled by nearest neighbour in numpy and pasted at integer pixel
offsets, and text is drawn by Agg on a transparent ``Figure`` at pixel positions and laid
over them. Text is most of the cost (about a millisecond a line), so each text's pixels
are cached: labels that repeat from picture to picture and epoch to epoch are drawn once.
The sheet grows to hold what is put on it; ``render`` draws it once.
"""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
import torch
from torch import Tensor

DPI = 100
PT = DPI / 72  # pixels per point of font size
CELL_GAP = 4  # pixels between image cells
LABEL_WIDTH = 150  # the column of row labels left of the cells


def cell_scale(side: int) -> int:
    """How many screen pixels per image pixel: at least 3, and cells of about 100 pixels (28 -> 4, 32 -> 4, 96 -> 3)."""
    return max(3, -(-100 // side))


def display_array(images: Tensor) -> np.ndarray:
    """Display-space (N, C, H, W) in [0, 1] -> numpy (N, H, W, C)."""
    return images.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def nearest_upscale(picture: np.ndarray, scale: int) -> np.ndarray:
    """(h, w[, 3]) -> (h * scale, w * scale[, 3]): each pixel becomes a scale x scale block."""
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


@functools.cache
def _lookup_table(name: str) -> np.ndarray:
    return matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]  # the registry hands out a fresh copy each time


def colormap(name: str, values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB floats (..., 3) through a matplotlib colour map (256 levels)."""
    return _lookup_table(name)[(np.clip(np.nan_to_num(values), 0, 1) * 255 + 0.5).astype(np.intp)]


def to_rgb(picture: np.ndarray) -> np.ndarray:
    """(h, w) grey or (h, w, 1 | 3) floats in [0, 1] -> uint8 (h, w, 3)."""
    if picture.ndim == 2:
        picture = picture[..., None]
    if picture.shape[-1] == 1:
        picture = np.repeat(picture, 3, axis=-1)
    return (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)


class Sheet:
    """A white picture that grows to the right and downwards to hold what is put on it (its text
    as drawn, not as estimated); coordinates are pixels from the top left.

    ``boxes`` records where each named image landed, ``(x, y, width, height)``: a test (or
    a reader of the code) can find a cell's pixels in the PNG.
    """

    def __init__(self, margin: int = 10):
        self.margin = margin
        self.width = self.height = 0  # what the images reach
        self._text_reach = (0, 0)  # what the text is estimated to reach: the size to draw it at
        self.boxes: dict[str, tuple[int, int, int, int]] = {}
        self._images: list[tuple[int, int, np.ndarray]] = []  # (x, y, uint8 pixels)
        self._texts: list[tuple[int, int, tuple]] = []  # (x, y, key into _TEXT_CACHE)

    def image(self, x: int, y: int, picture: np.ndarray, scale: int = 1, name: str | None = None) -> tuple[int, int]:
        """Paste ``picture`` ((h, w) grey or (h, w, 3), floats in [0, 1] or uint8), upscaled by
        ``scale``, with its top left at (x, y); returns its (width, height) on the sheet."""
        pixels = picture if picture.dtype == np.uint8 and picture.ndim == 3 else to_rgb(picture)
        pixels = nearest_upscale(pixels, scale)
        h, w = pixels.shape[:2]
        x, y = int(x), int(y)
        self.width, self.height = max(self.width, x + w), max(self.height, y + h)
        if name is not None:
            self.boxes[name] = (x, y, w, h)
        self._images.append((x, y, pixels))
        return w, h

    def text(
        self,
        x: float,
        y: float,
        s: str,
        size: float = 10,
        ha: str = "left",
        va: str = "top",
        color: str = "black",
        weight: str = "normal",
    ) -> None:
        """Text anchored at (x, y) as ``ha``/``va`` say (x, y rounded to whole pixels)."""
        lines = s.split("\n")
        width = 0.65 * size * PT * max(map(len, lines))  # generous: only the figure the text is drawn on
        height = 1.3 * size * PT * len(lines)
        x, y = round(x), round(y)
        right = x + {"left": 1, "center": 0.5, "right": 0}[ha] * width
        bottom = y + {"top": 1, "center": 0.5, "bottom": 0}[va] * height
        self._text_reach = (max(self._text_reach[0], int(right) + 1), max(self._text_reach[1], int(bottom) + 1))
        self._texts.append((x, y, (s, size, ha, va, color, weight)))

    def colorbar(
        self,
        x: int,
        y: int,
        height: int,
        cmap: str,
        low: str,
        high: str,
        label: str = "",
        width: int = 12,
        text_width: int = 64,
    ) -> int:
        """A vertical colour scale (high at the top) with its end values and a label; returns its total
        width, the same for any label of up to ``text_width`` pixels, so rows below each other line up."""
        ramp = colormap(cmap, np.linspace(1, 0, height))[:, None, :].repeat(width, axis=1)
        self.image(x, y, ramp)
        self.text(x + width + 3, y, high, size=8, va="top")
        self.text(x + width + 3, y + height, low, size=8, va="bottom")
        if label:
            self.text(x + width + 3, y + height / 2, label, size=8, va="center", color="dimgray")
        longest = max(len(line) for line in f"{low}\n{high}\n{label}".split("\n"))
        return width + 3 + max(text_width, int(0.58 * 8 * PT * longest)) + 4

    def render(self) -> Tensor:
        """Draw everything once: a float (3, H, W) picture in [0, 1].

        The images go straight into a numpy canvas. Matplotlib draws the text on a
        transparent figure, and each text's pixels are kept (``_TEXT_CACHE``): a label
        drawn in an earlier picture or epoch is pasted, not drawn again, as most are.
        """
        _draw_texts(
            {key: (x, y) for x, y, key in self._texts if key not in _TEXT_CACHE},
            max(self.width, self._text_reach[0]),
            max(self.height, self._text_reach[1]),
        )
        width, height = self.width, self.height
        for x, y, key in self._texts:  # the sheet holds the text as drawn (its pixels carry 2 px of padding)
            rgba, dx, dy = _TEXT_CACHE[key]
            width, height = max(width, x + dx + rgba.shape[1] - 2), max(height, y + dy + rgba.shape[0] - 2)
        width, height = width + self.margin, height + self.margin
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        for x, y, pixels in self._images:
            canvas[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        picture = canvas.astype(np.float32) / 255
        for x, y, key in self._texts:
            rgba, dx, dy = _TEXT_CACHE[key]
            left, top = x + dx, y + dy
            l0, t0 = max(left, 0), max(top, 0)
            l1, t1 = min(left + rgba.shape[1], width), min(top + rgba.shape[0], height)
            if l1 <= l0 or t1 <= t0:
                continue
            patch = rgba[t0 - top : t1 - top, l0 - left : l1 - left]
            alpha = patch[..., 3:]
            region = picture[t0:t1, l0:l1]
            region *= 1 - alpha
            region += alpha * patch[..., :3]
        return torch.from_numpy(picture).permute(2, 0, 1)


_TEXT_CACHE: dict[
    tuple, tuple[np.ndarray, int, int]
] = {}  # text key -> (RGBA floats, left and top offset from its anchor)
_TEXT_CACHE_SIZE = 4096


def _draw_texts(anchors: dict[tuple, tuple[int, int]], width: int, height: int) -> None:
    """Draw each text once, at its anchor on a transparent width x height figure, and cache its pixels."""
    if not anchors:
        return
    from matplotlib.figure import Figure

    from .image_logging import figure_to_tensor

    if len(_TEXT_CACHE) + len(anchors) > _TEXT_CACHE_SIZE:
        _TEXT_CACHE.clear()
    width, height = width + 200, height + 50  # room for a text that runs past its estimate: it is cached whole
    # Unhinted glyphs draw about a third faster, and at these sizes look the same.
    with matplotlib.rc_context({"text.hinting": "none", "text.hinting_factor": 1}):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
        fig.patch.set_alpha(0)
        artists = {
            key: fig.text(
                x / width,
                1 - y / height,
                key[0],
                fontsize=key[1],
                ha=key[2],
                va=key[3],
                color=key[4],
                weight=key[5],
                linespacing=1.15,
            )
            for key, (x, y) in anchors.items()
        }
        rgba = figure_to_tensor(fig, alpha=True).permute(1, 2, 0).numpy()  # straight (not premultiplied) alpha
        renderer = fig.canvas.get_renderer()
        for key, artist in artists.items():
            box = artist.get_window_extent(renderer)  # pixels, from the bottom left
            left, right = max(int(box.x0) - 2, 0), min(int(np.ceil(box.x1)) + 2, width)
            top, bottom = max(height - int(np.ceil(box.y1)) - 2, 0), min(height - int(box.y0) + 2, height)
            x, y = anchors[key]
            _TEXT_CACHE[key] = (rgba[top:bottom, left:right].copy(), left - x, top - y)
