"""A small learnable image dataset, generated: coloured shapes on textured backgrounds.

Each image shows one shape (the label) in a random colour, size, position and
rotation over a random background texture (gradient, stripes, checkerboard or
noise). The ten shapes stay distinct under rotation, so the labels are learnable
but not trivially: a model has to learn shape, not colour or position.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "ring", "square", "hollow_square", "triangle", "hollow_triangle", "cross", "star", "bar",
          "crescent")
_SUPERSAMPLE = 4  # draw at 4x and downsample: antialiased edges


def _polygon(center: tuple[float, float], radius: float, sides: int, angle: float, inner: float = 0.0):
    """Vertices of a regular polygon, or of a star when `inner` > 0 (alternating radii)."""
    points = []
    count = sides * 2 if inner else sides
    for k in range(count):
        r = radius * (inner if inner and k % 2 else 1.0)
        theta = angle + 2 * math.pi * k / count
        points.append((center[0] + r * math.cos(theta), center[1] + r * math.sin(theta)))
    return points


def _rotated_rect(center, half_w: float, half_h: float, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    return [(center[0] + x * c - y * s, center[1] + x * s + y * c) for x, y in corners]


def draw_shape_mask(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """An antialiased 'L' mask (255 = shape) of `size` x `size` pixels."""
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    radius = big * rng.uniform(0.22, 0.38)
    margin = radius * 1.05
    center = (rng.uniform(margin, big - margin), rng.uniform(margin, big - margin))
    angle = rng.uniform(0, 2 * math.pi)
    width = max(2, int(radius * 0.35))
    box = [center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius]
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=width)
    elif shape == "square":
        draw.polygon(_polygon(center, radius, 4, angle), fill=255)
    elif shape == "hollow_square":
        draw.polygon(_polygon(center, radius, 4, angle), outline=255, width=width)
    elif shape == "triangle":
        draw.polygon(_polygon(center, radius, 3, angle), fill=255)
    elif shape == "hollow_triangle":
        draw.polygon(_polygon(center, radius, 3, angle), outline=255, width=width)
    elif shape == "cross":
        draw.polygon(_rotated_rect(center, radius, radius * 0.28, angle), fill=255)
        draw.polygon(_rotated_rect(center, radius * 0.28, radius, angle), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(center, radius, 5, angle, inner=0.45), fill=255)
    elif shape == "bar":
        draw.polygon(_rotated_rect(center, radius, radius * 0.3, angle), fill=255)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        off = (center[0] + radius * 0.55 * math.cos(angle), center[1] + radius * 0.55 * math.sin(angle))
        draw.ellipse([off[0] - radius * 0.85, off[1] - radius * 0.85, off[0] + radius * 0.85, off[1] + radius * 0.85],
                     fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask.resize((size, size), Image.LANCZOS)


def _random_color(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, dtype=np.float32) * 255


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 HxWx3 texture: gradient, stripes, checkerboard or noise, in two random colours."""
    a = _random_color(rng, (0.0, 0.6), (0.2, 0.9))
    b = _random_color(rng, (0.0, 0.6), (0.2, 0.9))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(4)
    if kind == 0:
        theta = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta), 0, 1)
    elif kind == 1:
        theta, period = rng.uniform(0, math.pi), rng.uniform(0.15, 0.4)
        t = (np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period) > 0).astype(np.float32)
    elif kind == 2:
        cells = rng.integers(3, 8)
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    else:
        t = rng.uniform(0, 1, (size, size)).astype(np.float32)
    image = a + (b - a) * t[..., None]
    return image + rng.normal(0, 8, image.shape).astype(np.float32)


def render(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `shape`."""
    alpha = np.asarray(draw_shape_mask(shape, size, rng), dtype=np.float32)[..., None] / 255
    fg = _random_color(rng, (0.5, 1.0), (0.6, 1.0))
    pixels = background(size, rng) * (1 - alpha) + fg * alpha
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_image_folder(out: Path, classes: list[str], per_class: dict[str, int], size: int, seed: int) -> dict:
    """Write `<split>/<class>/<nnnnn>.png` under `out`; returns counts per split and class."""
    counts: dict[str, dict[str, int]] = {}
    for split_index, (split, count) in enumerate(per_class.items()):
        counts[split] = {}
        for shape in classes:
            # One generator per (seed, split, class): splits never share images, output is reproducible.
            rng = np.random.default_rng([seed, split_index, SHAPES.index(shape)])
            folder = out / split / shape
            folder.mkdir(parents=True)
            for i in range(count):
                render(shape, size, rng).save(folder / f"{i:05d}.png", compress_level=1)
            counts[split][shape] = count
    return counts
