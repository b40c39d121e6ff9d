"""Procedural scenes: the embedded data of the harness, generated from a seed, nothing downloaded.

One scene holds a few shapes drawn over a textured, cluttered background and yields the targets of
all four tasks at once: a class label (classification), boxes and visible instance masks
(detection, instance segmentation) and a semantic map (semantic segmentation).

Shape is the only class cue: colour, texture, size, rotation and position are drawn independently
of the class, and objects occlude each other, so a frozen random backbone with a linear probe does
not solve the classification view while a trained network does (`scripts/scene_difficulty.py`).

`SceneGenerator.scene(index)` is a pure function of `(seed, index)`: splits are disjoint index
ranges, any sample can be regenerated anywhere, and data-loader workers need no shared state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

# ---------------------------------------------------------------------------------------------
# Shape vocabulary: each kind is a tuple of parts (vertices in unit coordinates, filled or hole),
# drawn in order, so unions (cross, T) and holes (ring, frame) need no polygon algebra.

Part = tuple[np.ndarray, bool]


def _regular(
    n: int, radius: float = 1.0, phase: float = -np.pi / 2, center: tuple = (0.0, 0.0)
) -> np.ndarray:
    """Vertices of a regular n-gon; many vertices approximate a circle so every kind is a polygon."""
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius + center


def _arc(
    start: float, end: float, n: int = 24, radius: float = 1.0, center: tuple = (0.0, 0.0)
) -> np.ndarray:
    """Vertices along a circular arc from `start` to `end` (radians), ends included."""
    angles = np.linspace(start, end, n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius + center


def _star(points: int, inner: float) -> np.ndarray:
    """Vertices of a star alternating between radius 1 and `inner`."""
    outer = _regular(2 * points)
    return outer * np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)[:, None]


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=float)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], axis=1)  # image rows grow downwards


def _poly(*vertices: tuple[float, float]) -> np.ndarray:
    return np.array(vertices, dtype=float)


def _rasterise(parts: Sequence[Part], size: int) -> np.ndarray:
    """Draw parts given in pixel coordinates into a (size, size) bool mask, holes after fills."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for vertices, filled in parts:
        draw.polygon([tuple(p) for p in vertices], fill=int(filled))
    return np.asarray(canvas, dtype=bool)


def _normalised(parts: Sequence[Part], resolution: int = 256) -> tuple[Part, ...]:
    """Centre a kind on its centroid and scale it to the area of the unit disc.

    Equal areas keep size free of any class cue, and keep the largest object, whose class labels
    the scene, equally likely to be of any class; centring on the mass (not the bounding box)
    keeps lopsided kinds (crescent) from being cropped by the image border more than others.
    """
    points = np.concatenate([v for v, _ in parts])
    corner = points.min(0)
    pixel = (points.max(0) - corner).max() / (resolution - 2)
    mask = _rasterise([((v - corner) / pixel + 1, f) for v, f in parts], resolution)
    rows, cols = np.nonzero(mask)
    center = corner + (np.array([cols.mean(), rows.mean()]) + 0.5 - 1) * pixel
    scale = np.sqrt(np.pi / (mask.sum() * pixel**2))
    return tuple(((v - center) * scale, filled) for v, filled in parts)


def _solid(*polygons: np.ndarray) -> list[Part]:
    return [(p, True) for p in polygons]


_OUTLINES: dict[str, tuple[Part, ...]] = {
    name: _normalised(parts)
    for name, parts in {
        "circle": _solid(_regular(32)),
        "ellipse": _solid(_regular(32) * (1.0, 0.5)),
        "semicircle": _solid(_arc(0, np.pi)),
        "ring": [(_regular(32), True), (_regular(32, 0.55), False)],
        "crescent": [(_regular(32), True), (_regular(32, 0.8, center=(0.55, 0.0)), False)],
        "pie": _solid(np.vstack([_arc(0.25 * np.pi, 1.75 * np.pi), [(0.0, 0.0)]])),
        "drop": _solid(
            np.vstack([_arc(-0.2 * np.pi, 1.2 * np.pi, radius=0.6, center=(0, 0.4)), [(0, -1.0)]])
        ),
        "heart": _solid(_heart()),
        "clover": _solid(*(_regular(24, 0.5, center=tuple(c)) for c in _regular(3, 0.5))),
        "triangle": _solid(_regular(3)),
        "right_triangle": _solid(_poly((-1, -1), (1, 1), (-1, 1))),
        "square": _solid(_box(-1, -1, 1, 1)),
        "rectangle": _solid(_box(-1, -0.5, 1, 0.5)),
        "bar": _solid(_box(-1, -0.18, 1, 0.18)),
        "diamond": _solid(_poly((0, -1), (0.55, 0), (0, 1), (-0.55, 0))),
        "kite": _solid(_poly((0, -1), (0.6, -0.35), (0, 1), (-0.6, -0.35))),
        "trapezoid": _solid(_poly((-1, 0.55), (1, 0.55), (0.45, -0.55), (-0.45, -0.55))),
        "parallelogram": _solid(_poly((-1, 0.5), (0.4, 0.5), (1, -0.5), (-0.4, -0.5))),
        "pentagon": _solid(_regular(5)),
        "hexagon": _solid(_regular(6)),
        "star": _solid(_star(5, 0.42)),
        "star4": _solid(_star(4, 0.32)),
        "cross": _solid(_box(-1, -0.28, 1, 0.28), _box(-0.28, -1, 0.28, 1)),
        "arrow": _solid(
            _poly((-1, -0.22), (0.2, -0.22), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.22), (-1, 0.22))
        ),
        "chevron": _solid(_poly((-1, -0.8), (0, 0.1), (1, -0.8), (1, -0.1), (0, 0.8), (-1, -0.1))),
        "hourglass": _solid(_poly((-0.8, -1), (0.8, -1), (0.12, 0), (0.8, 1), (-0.8, 1), (-0.12, 0))),
        "bolt": _solid(
            _poly((-0.1, -1), (0.6, -1), (0.15, -0.2), (0.6, -0.2), (-0.4, 1), (-0.1, 0.15), (-0.5, 0.15))
        ),
        "l_shape": _solid(_box(-0.7, -1, -0.15, 1), _box(-0.7, 0.45, 0.7, 1)),
        "t_shape": _solid(_box(-1, -1, 1, -0.45), _box(-0.27, -1, 0.27, 1)),
        "u_shape": _solid(_box(-0.9, -1, -0.4, 1), _box(0.4, -1, 0.9, 1), _box(-0.9, 0.5, 0.9, 1)),
        "s_shape": _solid(_box(-0.3, -0.75, 1, 0), _box(-1, 0, 0.3, 0.75)),
        "frame": [(_box(-1, -1, 1, 1), True), (_box(-0.55, -0.55, 0.55, 0.55), False)],
    }.items()
}

SHAPE_KINDS: tuple[str, ...] = tuple(_OUTLINES)


def split_vocabulary(downstream: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split `SHAPE_KINDS` into `downstream` and the disjoint rest, which pretrains a backbone upstream."""
    unknown = set(downstream) - set(SHAPE_KINDS)
    if unknown:
        raise ValueError(f"unknown shape kinds: {sorted(unknown)}")
    return tuple(downstream), tuple(k for k in SHAPE_KINDS if k not in downstream)


# Ten kinds that stay distinct under any rotation and the aspect jitter; the other 22 go upstream.
DOWNSTREAM_CLASSES, UPSTREAM_CLASSES = split_vocabulary(
    ("circle", "triangle", "square", "star", "cross", "ring", "crescent", "arrow", "heart", "t_shape")
)

# ---------------------------------------------------------------------------------------------
# Patterns: a weight map t in [0, 1] that blends two colours; backgrounds and object textures
# share them. Periods are in units of a 64 px image, so scenes look alike at any size.

PatternFn = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in 64 px units, (x, y), each (size, size)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (64.0 / size)
    return np.meshgrid(coords, coords)


def _rotated(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along a random direction and across it."""
    a = rng.uniform(0, np.pi)
    return x * np.cos(a) + y * np.sin(a), y * np.cos(a) - x * np.sin(a)


def _flat(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.zeros_like(x)


def _gradient(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, _ = _rotated(rng, x, y)
    return (u - u.min()) / max(float(np.ptp(u)), 1e-6)


def _stripes(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, _ = _rotated(rng, x, y)
    return ((u / rng.uniform(3, 10) + rng.random()) % 1 < 0.5).astype(np.float32)


def _checker(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, v = _rotated(rng, x, y)
    period = rng.uniform(4, 12)
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def _dots(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, v = _rotated(rng, x, y)
    period = rng.uniform(3, 7)
    du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
    return (du**2 + dv**2 < rng.uniform(0.04, 0.1)).astype(np.float32)


def _noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth value noise: a coarse random grid, bilinearly upsampled."""
    cells = int(rng.integers(3, 12))
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(coarse.resize(x.shape[::-1], Image.BILINEAR))


PATTERNS: dict[str, PatternFn] = {
    "flat": _flat,
    "gradient": _gradient,
    "stripes": _stripes,
    "checker": _checker,
    "dots": _dots,
    "noise": _noise,
}


@dataclass(frozen=True)
class SceneStyle:
    """The nuisance distribution of a scene family: which patterns, how much clutter and noise.

    The upstream style differs from the default one, so that pretraining on upstream scenes is
    not a rehearsal of the downstream image statistics.
    """

    backgrounds: Mapping[str, float]
    textures: Mapping[str, float]
    texture_contrast: float = 70.0  # the most a pattern's two colours differ per channel (0-255)
    max_clutter: int = 4
    max_noise: float = 8.0  # std of the per-pixel Gaussian noise, in 0-255 units


STYLES: dict[str, SceneStyle] = {
    "default": SceneStyle(
        backgrounds={"flat": 1, "gradient": 1, "noise": 1, "stripes": 1, "checker": 1},
        textures={"flat": 1, "stripes": 1, "dots": 1, "gradient": 1},
    ),
    # Every pattern as a background, equally likely: the embedded VTAB's texture task labels them.
    "textures": SceneStyle(
        backgrounds=dict.fromkeys(("flat", "gradient", "stripes", "checker", "dots", "noise"), 1),
        textures={"flat": 1, "stripes": 1, "dots": 1, "gradient": 1},
    ),
    # Clean scenes, one large object each: a from-scratch transformer gets a foothold here within
    # minutes, where the cluttered default scenes leave it at chance for thousands of steps.
    "upstream": SceneStyle(
        backgrounds={"flat": 1, "gradient": 1},
        textures={"flat": 1},
        max_clutter=0,
        max_noise=0.0,
    ),
}


def _choose(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[rng.choice(len(names), p=p / p.sum())]


def _paint(rng: np.random.Generator, pattern: np.ndarray, base: np.ndarray, contrast: float) -> np.ndarray:
    """Blend `base` and a colour at most `contrast` away per channel by a weight map, (H, W, 3).

    Texture edges weaker than object outlines keep the outline the salient, learnable cue.
    """
    second = np.clip(base + rng.uniform(-contrast, contrast, 3), 0, 255)
    t = pattern[..., None]
    return base * (1 - t) + second * t


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass(eq=False)  # arrays have no single truth value: compare fields with numpy instead
class Scene:
    """One generated scene with the targets of every task; instances are in drawing order."""

    image: np.ndarray  # uint8 (H, W, 3)
    boxes: np.ndarray  # float32 (N, 4) xyxy pixel edges: a mask spanning columns 3..5 has x0=3, x1=6
    labels: np.ndarray  # int64 (N,) indices into the generator's classes
    masks: np.ndarray  # bool (N, H, W) visible masks: disjoint, occluded by later objects
    semantic: np.ndarray  # int64 (H, W): 0 background, k + 1 for class k
    label: int  # the class of the instance with the largest visible area
    poses: np.ndarray  # float32 (N, 4) per instance: centre x, centre y, radius (px), angle (radians)
    background: str  # the background's pattern (`PATTERNS`)


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes of non-empty masks (N, H, W), with exclusive pixel-edge maxima."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


class SceneGenerator:
    """Draws scenes of `classes` (kinds from `SHAPE_KINDS`) as a pure function of `(seed, index)`.

    Each scene has `min_objects` to `max_objects` objects of uniformly drawn classes: one main
    object, whose area is that of a disc of radius `scale` (fractions of the image side), and
    distractors `distractor_scale` times its radius, drawn in random order so that any may
    occlude another. Every object has any rotation, an aspect jitter up to `max_aspect`, and
    colours and texture independent of its class. Instances with a visible area below
    `min_visible` (a fraction of the image) are dropped: they are slivers left by occlusion.
    """

    def __init__(
        self,
        classes: Sequence[str],
        img_size: int = 64,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 3,
        scale: tuple[float, float] = (0.18, 0.3),
        distractor_scale: tuple[float, float] = (0.3, 0.55),
        max_aspect: float = 1.2,
        min_visible: float = 0.005,
        style: str = "default",
    ) -> None:
        unknown = set(classes) - set(SHAPE_KINDS)
        if unknown:
            raise ValueError(f"unknown shape kinds: {sorted(unknown)}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        self.classes = tuple(classes)
        self.img_size = img_size
        self.seed = seed
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.scale = scale
        self.distractor_scale = distractor_scale
        self.max_aspect = max_aspect
        self.min_area = max(1, round(min_visible * img_size**2))
        self.style = STYLES[style]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def scene(self, index: int) -> Scene:
        """The scene at `index`; redrawn from the same stream on the rare draw with no visible object."""
        rng = np.random.default_rng([self.seed, index])
        while True:
            scene = self._draw(rng)
            if len(scene.labels):
                return scene

    def _draw(self, rng: np.random.Generator) -> Scene:
        """Background, then objects in order (each hides what it covers), then sensor noise."""
        background = _choose(rng, self.style.backgrounds)
        canvas = self._background(rng, background)
        owner = np.full(canvas.shape[:2], -1, dtype=np.int64)
        labels = rng.integers(self.num_classes, size=rng.integers(self.min_objects, self.max_objects + 1))
        poses = np.zeros((len(labels), 4), dtype=np.float32)
        for i, (label, radius) in enumerate(zip(labels, self._radii(rng, len(labels)), strict=True)):
            aspect, angle, center = self._pose(radius, rng)
            poses[i] = (*center, radius, angle)
            mask = self._object_mask(self.classes[label], radius, aspect, angle, center)
            if mask.any():
                canvas[mask] = self._object_fill(rng, canvas, mask)[mask]
                owner[mask] = i
        noisy = canvas + rng.normal(0, rng.uniform(0, self.style.max_noise), canvas.shape)
        image = np.clip(noisy, 0, 255).astype(np.uint8)
        return self._targets(image, owner, labels, poses, background)

    def _targets(
        self, image: np.ndarray, owner: np.ndarray, labels: np.ndarray, poses: np.ndarray, background: str
    ) -> Scene:
        """Visible masks, boxes and semantic map from the per-pixel owner of the last drawn object."""
        masks = owner[None] == np.arange(len(labels))[:, None, None]
        keep = masks.sum((1, 2)) >= self.min_area
        masks, labels = masks[keep], labels[keep].astype(np.int64)
        semantic = np.zeros(owner.shape, dtype=np.int64)
        for mask, label in zip(masks, labels, strict=True):
            semantic[mask] = label + 1
        label = int(labels[masks.sum((1, 2)).argmax()]) if len(labels) else -1
        return Scene(image, tight_boxes(masks), labels, masks, semantic, label, poses[keep], background)

    def _background(self, rng: np.random.Generator, pattern_name: str) -> np.ndarray:
        """A textured background with clutter strokes, (H, W, 3) float in 0-255."""
        x, y = _grid(self.img_size)
        pattern = PATTERNS[pattern_name](rng, x, y)
        base = rng.integers(0, 256, 3).astype(np.float32)
        image = Image.fromarray(_paint(rng, pattern, base, self.style.texture_contrast).astype(np.uint8))
        self._clutter(rng, ImageDraw.Draw(image))
        return np.asarray(image, dtype=np.float32)

    def _clutter(self, rng: np.random.Generator, draw: ImageDraw.ImageDraw) -> None:
        """Open strokes (polylines and arcs): edges and corners that belong to no object."""
        size, unit = self.img_size, self.img_size / 64
        for _ in range(rng.integers(0, self.style.max_clutter + 1)):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            width = max(1, round(rng.uniform(1, 2.5) * unit))
            if rng.random() < 0.5:
                points = rng.uniform(-0.1, 1.1, (int(rng.integers(2, 4)), 2)) * size
                draw.line([tuple(p) for p in points], fill=colour, width=width)
            else:
                x0, y0 = rng.uniform(-0.2, 0.8, 2) * size
                r = rng.uniform(0.1, 0.4) * size
                start = rng.uniform(0, 360)
                end = start + rng.uniform(60, 240)
                draw.arc((x0, y0, x0 + r, y0 + r), start, end, fill=colour, width=width)

    def _radii(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Object radii in pixels, main object at a random place in the drawing order; distractors
        are clearly smaller, so which object labels the scene is rarely a close call."""
        main = rng.uniform(*self.scale) * self.img_size
        radii = main * rng.uniform(*self.distractor_scale, n)
        radii[rng.integers(n)] = main
        return radii

    def _pose(self, radius: float, rng: np.random.Generator) -> tuple[float, float, np.ndarray]:
        """A random pose (aspect, angle, centre) for an object of `radius` px: the disc of equal area
        lies inside the image."""
        aspect = np.exp(rng.uniform(-1, 1) * np.log(self.max_aspect))
        angle = rng.uniform(0, 2 * np.pi)
        center = rng.uniform(radius, self.img_size - radius, 2)
        return aspect, angle, center

    def _object_mask(
        self, kind: str, radius: float, aspect: float, angle: float, center: np.ndarray
    ) -> np.ndarray:
        """The full (unoccluded) mask of one object of `kind` at a pose, (H, W) bool."""
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        scale = np.array([radius * aspect, radius / aspect])
        outline = _OUTLINES[kind]
        return _rasterise([((v * scale) @ rotation.T + center, f) for v, f in outline], self.img_size)

    def _object_fill(self, rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A textured fill based on the one of four random colours most unlike the background
        under the object, so the object stays visible whatever its colours."""
        x, y = _grid(self.img_size)
        pattern = PATTERNS[_choose(rng, self.style.textures)](rng, x, y)
        candidates = rng.integers(0, 256, (4, 3)).astype(np.float32)
        base = candidates[np.abs(candidates - canvas[mask].mean(0)).sum(1).argmax()]
        return _paint(rng, pattern, base, self.style.texture_contrast)


# ---------------------------------------------------------------------------------------------
# Torch views: one per task, each over a contiguous index range of the generator.


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255)


class SceneView(Dataset):
    """Scenes `offset .. offset + size - 1` of a generator; splits are disjoint ranges (`make_splits`)."""

    def __init__(
        self, generator: SceneGenerator, size: int, offset: int = 0, transform: Callable | None = None
    ):
        self.generator = generator
        self.size = size
        self.offset = offset
        self.transform = transform

    def __len__(self) -> int:
        return self.size

    def scene(self, i: int) -> Scene:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a view of {self.size} scenes")
        return self.generator.scene(self.offset + i)

    @property
    def indices(self) -> range:
        """The generator indices this view covers."""
        return range(self.offset, self.offset + self.size)


class SceneClassification(SceneView):
    """(image float (3, H, W) in [0, 1], label int); `transform` maps the image tensor."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        scene = self.scene(i)
        image = to_tensor(scene.image)
        return (self.transform(image) if self.transform else image), scene.label


class SceneDetection(SceneView):
    """(image, target) in torchvision's detection format, for detection and instance segmentation.

    The target holds `boxes` float32 (N, 4) xyxy, `labels` int64 (N,) and `masks` uint8 (N, H, W).
    Labels are class index + 1, as torchvision's detectors reserve 0 for the background (the same
    ids as the semantic map). `transform` maps `(image, target)` to `(image, target)`.
    """

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scene = self.scene(i)
        target = {
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.labels + 1),
            "masks": torch.from_numpy(scene.masks.astype(np.uint8)),
        }
        image = to_tensor(scene.image)
        return self.transform(image, target) if self.transform else (image, target)


class SceneSegmentation(SceneView):
    """(image, semantic int64 (H, W), 0 background, k + 1 for class k); `transform` maps both."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene = self.scene(i)
        image, semantic = to_tensor(scene.image), torch.from_numpy(scene.semantic)
        return self.transform(image, semantic) if self.transform else (image, semantic)


def make_splits(
    view: type[SceneView],
    generator: SceneGenerator,
    sizes: Mapping[str, int],
    transforms: Mapping[str, Callable] | None = None,
) -> dict[str, SceneView]:
    """Consecutive, disjoint index ranges in the order of `sizes`, e.g. train, val, test;
    `transforms` maps a split name to its transform (augment train only)."""
    splits, offset = {}, 0
    for name, size in sizes.items():
        splits[name] = view(generator, size, offset, (transforms or {}).get(name))
        offset += size
    return splits
