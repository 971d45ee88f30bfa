"""The embedded default dataset: small synthetic scenes in the PASCAL VOC layout.

The scenes follow what holds for real photos, so that a map's spread onto an object can be told
from its spread onto the background:

* each foreground class is a "bird": a small head whose saturated colour and pattern are unique to
  the class (the discriminative part) on a large body;
* the body belongs to its bird alone and carries weaker, not zero, class evidence: its colour is a
  muted mix of the class colour into a random earthy base, with the bird's own fur stripes;
* clutter does not copy object parts: grey-brown stones and bars, never bird bodies or heads;
* one to three birds per image, often of different classes; VOC's ignore band (255) along outlines.

A classifier keys on the head first and its CAM covers the head well and the body weakly: the gap
RIB is meant to close. Everything is drawn with vectorised numpy on the whole pixel grid, and image
``i`` depends only on ``(seed, i)``, so a dataset is reproducible byte for byte.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

from rib_ext.config import DemoDataConfig
from rib_ext.io import atomic_path, save_json, save_text

from .errors import DatasetError
from .images import IGNORE_INDEX, save_label_png
from .voc import SPLIT_DIR, write_annotation_xml, write_cls_labels

DEMO_VERSION = 2  # bump whenever the drawing changes, so stamped datasets are regenerated
STAMP_NAME = "demo_stamp.json"
MARKER_NAME = ".rib_demo"  # written first: marks a folder this generator may overwrite

# name, head colour, second head colour, head pattern
DEMO_CLASSES = (
    ("cardinal", (225, 30, 35), (120, 10, 15), "stripes_across"),
    ("bluejay", (35, 80, 235), (235, 240, 250), "stripes_along"),
    ("goldfinch", (245, 215, 20), (25, 20, 10), "checker"),
    ("mallard", (20, 175, 70), (5, 70, 30), "rings"),
    ("rosefinch", (225, 45, 205), (255, 190, 240), "spot"),
)
CLASS_NAMES = tuple(c[0] for c in DEMO_CLASSES)


class Species(NamedTuple):
    """How one class of bird is drawn. The demo's five keep every default: the body wears the
    head's plumage, muted. The pretraining world (:mod:`rib_ext.data.demo_world`) varies the rest,
    so that bodies, plumages and shapes tell some of its classes apart, not only heads."""

    name: str
    head: tuple  # the head's first colour
    head2: tuple  # its second colour
    pattern: str  # the head's pattern (see _pattern)
    body: Optional[tuple] = None  # the body's plumage colours and pattern; None: the head's
    body2: Optional[tuple] = None
    body_pattern: Optional[str] = None
    tint: tuple = (0.15, 0.35)  # how much plumage the body's earthy base carries
    aspect: tuple = (1.5, 2.3)  # body length / width
    head_ratio: float = 0.65  # head radius / body half-width
    size: tuple = (8.0, 18.0)  # body half-width at 128 pixels


DEMO_SPECIES = tuple(Species(*c) for c in DEMO_CLASSES)

# Earthy bases of the bodies and of the clutter; a body mixes its class colour into one of them.
BODY_COLOURS = np.array(
    [(122, 96, 72), (140, 138, 132), (168, 148, 112), (102, 104, 72), (92, 82, 88), (150, 120, 96)],
    dtype=np.float32,
)
# How much of the class colour a body carries, drawn per bird: enough to be evidence for the class,
# too little to match the head's saturated colour (and neighbouring hues, red and magenta, overlap).
BODY_TINT = (0.15, 0.35)
_OWNED = ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets", "cls_labels.npy", "cls_labels.npy.source.json",
          "classes.txt", STAMP_NAME)


class Bird(NamedTuple):
    cls: int
    species: Species
    body: np.ndarray  # bool [S, S]
    head: np.ndarray  # bool [S, S]
    u: np.ndarray  # body-frame coordinates (along the body axis), float [S, S]
    v: np.ndarray
    head_offset: float
    head_radius: float


# ---------------------------------------------------------------------------------------------
# Drawing primitives


def _interp_matrix(n: int, size: int) -> np.ndarray:
    """[size, n] linear-interpolation weights from n control points to size samples."""
    pos = np.linspace(0, n - 1, size)
    return np.stack([np.interp(pos, np.arange(n), np.eye(n)[k]) for k in range(n)], axis=1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    m = _interp_matrix(cells, size)
    grid = rng.normal(0.0, 1.0, (cells, cells, channels))
    rows = np.tensordot(m, grid, axes=(1, 0))  # [size, cells, C]
    return np.tensordot(rows, m, axes=(1, 1)).transpose(0, 2, 1)  # [size, size, C]


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Desaturated, blotchy, grainy texture (no colour a head could be mistaken for)."""
    grey = rng.uniform(85, 175)
    tint = rng.uniform(-12, 12, 3)
    cells = int(rng.integers(3, 7))
    # Blotches mostly in brightness, a little in colour: pastel at most, never a head's hue.
    light = 24.0 * _smooth_noise(rng, size, cells, 1)
    chroma = 7.0 * _smooth_noise(rng, size, cells, 3)
    img = (grey + tint + light + chroma).astype(np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(6, 20) * size / 128
    waves = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    img += rng.uniform(4, 14) * waves[..., None]
    return img + rng.standard_normal(img.shape, dtype=np.float32) * 7


def _body_frame(yy, xx, cy, cx, theta):
    dy, dx = yy - cy, xx - cx
    return dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)


def _random_bird(rng: np.random.Generator, cls: int, species: Species, size: int, yy, xx) -> Bird:
    f = size / 128.0
    b = rng.uniform(*species.size) * f
    a = b * rng.uniform(*species.aspect)
    r = species.head_ratio * b
    d = a + 0.3 * r
    theta = rng.uniform(0, 2 * np.pi)
    # Keep the head inside the picture; the body may leave it (truncated objects, as in VOC).
    reach = d + r + 1
    cy, cx = rng.uniform(reach * 0.4, size - reach * 0.4, 2)
    u, v = _body_frame(yy, xx, cy, cx, theta)
    body = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    head = (u - d) ** 2 + v**2 <= r**2
    return Bird(cls, species, body, head, u, v, d, r)


def _head_fits(bird: Bird) -> bool:
    # The head disc must be (all but rasterisation error) inside the picture: the class cue is never
    # cut by the border, so every labelled class is recognisable.
    return int(bird.head.sum()) >= int(0.9 * np.pi * bird.head_radius**2)


def _paint_body(img, rng, bird: Bird) -> None:
    """The body wears its class's plumage, muted: the head's two colours and pattern (at the head's
    scale) mixed weakly into an earthy base. It shares the head's features, as a real bird's body
    shares its plumage, but each pixel is far weaker evidence than a head pixel."""
    sp = bird.species
    c1, c2, kind = sp.body or sp.head, sp.body2 or sp.head2, sp.body_pattern or sp.pattern
    base = BODY_COLOURS[rng.integers(len(BODY_COLOURS))] + rng.uniform(-12, 12, 3)
    tint = rng.uniform(*sp.tint)
    u, v = bird.u[bird.body], bird.v[bird.body]
    second = _pattern(kind, u, v, bird.head_radius)
    plumage = np.where(second[:, None], np.float32(c2), np.float32(c1))
    # Darker towards the flanks, so the body reads as one rounded thing rather than a flat patch.
    shade = 1.0 - 0.25 * np.clip((v / (np.abs(v).max(initial=0) + 1e-6)) ** 2, 0, 1)
    img[bird.body] = ((1 - tint) * base + tint * plumage) * shade[:, None] + rng.normal(0, 6, (v.size, 3))


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """bool, shaped like ``u``: where the head shows its second colour (``u, v`` head-centred)."""
    p = max(3.0, 0.9 * r)
    if kind == "stripes_across":
        return np.sin(2 * np.pi * u / p) > 0
    if kind == "stripes_along":
        return np.sin(2 * np.pi * v / p) > 0
    if kind == "checker":
        return (np.floor(u / (p / 2)) + np.floor(v / (p / 2))) % 2 == 0
    if kind == "rings":
        return np.sin(2 * np.pi * np.hypot(u, v) / p) > 0
    if kind == "spot":
        return np.hypot(u, v) < 0.4 * r
    # Patterns of the pretraining world only.
    if kind == "plain":
        return np.zeros(u.shape, dtype=bool)
    if kind == "diagonal":
        return np.sin(2 * np.pi * (u + v) / (1.4 * p)) > 0
    if kind == "dots":
        return (np.sin(2 * np.pi * u / p) > 0.5) & (np.sin(2 * np.pi * v / p) > 0.5)
    raise ValueError(f"unknown head pattern {kind!r}")


def _paint_head(img, rng, bird: Bird) -> None:
    _, c1, c2, kind = bird.species[:4]
    h = bird.head
    second = _pattern(kind, bird.u[h] - bird.head_offset, bird.v[h], bird.head_radius)
    img[h] = np.where(second[:, None], np.float32(c2), np.float32(c1)) + rng.normal(0, 6, (second.size, 3))


def _paint_clutter(img, rng, size: int, yy, xx) -> None:
    """Stones (irregular blobs) and bars in the bodies' earthy bases, untinted and without a head:
    things a classifier must learn to ignore, none of them a copy of a bird's part."""
    f = size / 128
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(6, 14) * f
        angle = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + 0.25 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1)
        stone = np.hypot(yy - cy, xx - cx) <= r * wobble
        colour = BODY_COLOURS[rng.integers(len(BODY_COLOURS))] + rng.uniform(-20, 20)
        img[stone] = colour + rng.normal(0, 8, (int(stone.sum()), 3))
    for _ in range(int(rng.integers(0, 3))):
        cy, cx = rng.uniform(0, size, 2)
        u, v = _body_frame(yy, xx, cy, cx, rng.uniform(0, np.pi))
        bar = (np.abs(u) <= rng.uniform(10, 30) * f) & (np.abs(v) <= rng.uniform(1.5, 4) * f)
        img[bar] = rng.uniform(75, 190) + rng.normal(0, 6, (int(bar.sum()), 3))  # never a head's black or white


def _place_birds(rng: np.random.Generator, size: int, yy, xx, species=DEMO_SPECIES,
                 counts=(0.3, 0.4, 0.3)) -> list[Bird]:
    """1-3 birds (``counts``: the chances of 1, 2, 3) that barely overlap, each with its whole
    head visible (rejection sampling)."""
    count = int(rng.choice([1, 2, 3], p=list(counts)))
    birds: list[Bird] = []
    taken = np.zeros((size, size), dtype=bool)
    for _ in range(count):
        cls = int(rng.integers(len(species)))
        for _attempt in range(30):
            bird = _random_bird(rng, cls, species[cls], size, yy, xx)
            shape = bird.body | bird.head
            if not _head_fits(bird) or (taken & bird.head).any():
                continue
            if (taken & shape).sum() > 0.05 * shape.sum():
                continue
            birds.append(bird)
            taken |= shape
            break
    return birds


def _ignore_band(labels: np.ndarray, radius: int) -> np.ndarray:
    """bool: pixels within ``radius`` of a label change (VOC's void outline, 2*radius wide)."""
    pad = np.pad(labels, radius, mode="edge")
    h, w = labels.shape
    lo, hi = labels.copy(), labels.copy()
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            win = pad[dy:dy + h, dx:dx + w]
            np.minimum(lo, win, out=lo)
            np.maximum(hi, win, out=hi)
    return lo != hi


def draw_scene(rng: np.random.Generator, size: int, species=DEMO_SPECIES, counts=(0.3, 0.4, 0.3)):
    """One scene drawn with ``rng``: ``(image float32 [S, S, 3] unclipped, labels uint8 [S, S]
    (class + 1, 0 background), birds)``. The demo and the pretraining world both draw with it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = _background(rng, size, yy, xx)
    _paint_clutter(img, rng, size, yy, xx)
    birds = _place_birds(rng, size, yy, xx, species, counts)
    labels = np.zeros((size, size), dtype=np.uint8)
    for bird in birds:
        _paint_body(img, rng, bird)
        _paint_head(img, rng, bird)
        labels[bird.body | bird.head] = bird.cls + 1
    return img, labels, birds


def render_scene(seed: int, index: int, size: int):
    """Image ``index`` of the demo with seed ``seed``.

    Returns ``(image uint8 [S, S, 3], mask uint8 [S, S], objects)`` where ``objects`` lists
    ``(class name, (xmin, ymin, xmax, ymax))`` with 1-based inclusive VOC boxes.
    """
    img, labels, birds = draw_scene(np.random.default_rng([seed, index]), size)
    objects = []
    for bird in birds:
        ys, xs = np.nonzero(bird.body | bird.head)
        objects.append((CLASS_NAMES[bird.cls], (xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1)))
    mask = labels.copy()
    mask[_ignore_band(labels, max(1, round(size / 128)))] = IGNORE_INDEX
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, objects


# ---------------------------------------------------------------------------------------------
# Writing the dataset


def demo_ids(cfg: DemoDataConfig) -> tuple[list[str], list[str]]:
    """Train and val ids, VOC-shaped so IRN's integer keys work (``2021_000000`` ...)."""
    ids = [f"2021_{i:06d}" for i in range(cfg.num_train + cfg.num_val)]
    return ids[: cfg.num_train], ids[cfg.num_train:]


def _stamp(cfg: DemoDataConfig, jpeg_quality: int) -> dict:
    return {"generator": "rib_ext.data.demo", "version": DEMO_VERSION, "config": dataclasses.asdict(cfg), "jpeg_quality": jpeg_quality}


def _is_complete(root: Path, stamp: dict, ids: list[str]) -> bool:
    try:
        if json.loads((root / STAMP_NAME).read_text()) != stamp:
            return False
    except (OSError, ValueError):
        return False
    files = [root / "cls_labels.npy", root / "classes.txt", root / SPLIT_DIR / "train.txt", root / SPLIT_DIR / "val.txt"]
    for i in ids:
        files += [root / "JPEGImages" / f"{i}.jpg", root / "Annotations" / f"{i}.xml", root / "SegmentationClass" / f"{i}.png"]
    return all(p.is_file() for p in files)


def _claim(root: Path) -> None:
    """Make ``root`` ours, clearing an older demo; never write into a folder we did not create."""
    if root.exists() and any(root.iterdir()) and not (root / MARKER_NAME).exists():
        raise DatasetError(f"{root}: folder is not empty and was not made by generate_demo; refusing to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_NAME).touch()
    for name in _OWNED:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _save_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            Image.fromarray(img).save(f, format="JPEG", quality=quality)


def _validate(cfg: DemoDataConfig) -> None:
    if cfg.num_train < 1 or cfg.num_val < 1:
        raise ValueError(f"demo needs at least one train and one val image, got {cfg.num_train}/{cfg.num_val}")
    if cfg.seed < 0:
        raise ValueError(f"demo seed must be non-negative, got {cfg.seed}")
    if cfg.image_size < 32:
        raise ValueError(f"demo image_size must be at least 32, got {cfg.image_size}")


def generate_demo(root, cfg: Optional[DemoDataConfig] = None, *, jpeg_quality: int = 85) -> Path:
    """Write the demo dataset under ``root`` (VOC layout) and return ``root``.

    Does nothing if ``root`` already holds a complete demo of the same settings (a stamp file,
    written last, records them). Refuses to write into a non-empty folder it did not create.
    """
    cfg = cfg or DemoDataConfig()
    _validate(cfg)
    root = Path(root)
    train_ids, val_ids = demo_ids(cfg)
    ids = train_ids + val_ids
    stamp = _stamp(cfg, jpeg_quality)
    if _is_complete(root, stamp, ids):
        return root
    _claim(root)
    save_text(root / "classes.txt", "".join(f"{n}\n" for n in CLASS_NAMES))
    for index, image_id in enumerate(ids):
        img, mask, objects = render_scene(cfg.seed, index, cfg.image_size)
        _save_jpeg(root / "JPEGImages" / f"{image_id}.jpg", img, jpeg_quality)
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
        write_annotation_xml(root / "Annotations" / f"{image_id}.xml", image_id, mask.shape, objects)
    save_text(root / SPLIT_DIR / "train.txt", "".join(f"{i}\n" for i in train_ids))
    save_text(root / SPLIT_DIR / "val.txt", "".join(f"{i}\n" for i in val_ids))
    write_cls_labels(root, ids, root / "cls_labels.npy", source="xml")
    save_json(root / STAMP_NAME, stamp)
    return root
