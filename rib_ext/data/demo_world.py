"""The demo world's "ImageNet": a pretraining set drawn by the demo's own code, with many more classes.

A real weakly supervised classifier starts from ImageNet weights: its backbone already holds
detectors of whole objects and their parts, learnt on a broader task, and fine-tuning on image-level
labels then uses the most discriminative of them. This module is that broader task for the demo's
world of birds: :data:`WORLD_SPECIES` holds 40 classes, drawn by :func:`rib_ext.data.demo.draw_scene`
(the same background, clutter, bodies and heads), one to three birds per image. The classes come in
ten families of four; within a family the four differ in one thing each:

* ``<family>_a``: the family's bird;
* ``<family>_h``: another head (colours and pattern), the same body and shape;
* ``<family>_b``: another body plumage, strongly tinted, the same head and shape;
* ``<family>_s``: another shape (round or long body, small or large head), the same plumage.

So heads, body plumages and shapes are each the only evidence for some pairs of classes, and a
network trained on them learns detectors for bodies as well as for heads. No class is one of the
demo's five (no world class wears a demo class's head), and the images come from a random stream
of their own (seeded with :data:`WORLD_STREAM` before the seed and index), never the demo's.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .demo import DEMO_SPECIES, Species, draw_scene

WORLD_VERSION = 1
WORLD_STREAM = 271828  # first word of every world image's random seed; the demo's seeds have two words
WORLD_COUNTS = (0.4, 0.35, 0.25)  # chances of 1, 2, 3 birds in an image

# Saturated plumage colours: the demo's, and as many more.
PALETTE = (
    (225, 30, 35), (120, 10, 15), (35, 80, 235), (235, 240, 250), (245, 215, 20), (25, 20, 10),
    (20, 175, 70), (5, 70, 30), (225, 45, 205), (255, 190, 240), (250, 130, 20), (20, 200, 215),
    (140, 40, 200), (160, 230, 40), (250, 110, 120), (15, 40, 120), (120, 220, 190), (200, 160, 90),
)
PATTERNS = ("stripes_across", "stripes_along", "checker", "rings", "spot", "plain", "diagonal", "dots")
FAMILIES = 10
SHAPES = (  # (aspect, head ratio): the demo's bird, a round body, a long body, a big head, a small head
    ((1.5, 2.3), 0.65), ((1.0, 1.3), 0.65), ((2.6, 3.3), 0.55), ((1.5, 2.0), 0.95), ((1.9, 2.6), 0.42),
)


def _demo_heads() -> set:
    return {(s.head, s.head2, s.pattern) for s in DEMO_SPECIES}


def _plumage(rng: np.random.Generator, avoid: set) -> Tuple[tuple, tuple, str]:
    while True:
        i, j = rng.choice(len(PALETTE), 2, replace=False)
        combo = (PALETTE[i], PALETTE[j], PATTERNS[int(rng.integers(len(PATTERNS)))])
        if combo not in avoid:
            return combo


def world_species(seed: int = 0) -> Tuple[Species, ...]:
    """The 40 classes (a fixed function of ``seed``); see the module docstring."""
    rng = np.random.default_rng([WORLD_STREAM, 0, seed])
    used = set(_demo_heads())  # never a demo head, and no two world heads alike
    out = []
    for f in range(FAMILIES):
        head = _plumage(rng, used)
        head_h = _plumage(rng, used | {head})
        used |= {head, head_h}
        body = _plumage(rng, set())
        body_b = _plumage(rng, {body})
        shape = SHAPES[f % len(SHAPES)]
        shape_s = SHAPES[(f + 1 + int(rng.integers(len(SHAPES) - 1))) % len(SHAPES)]
        tint = (0.25, 0.55)  # bodies carry more plumage than the demo's: bodies are evidence here
        name = f"w{f:02d}"
        for suffix, h, b, (aspect, ratio), t in (
                ("a", head, body, shape, tint), ("h", head_h, body, shape, tint),
                ("b", head, body_b, shape, (0.4, 0.7)), ("s", head, body, shape_s, tint)):
            out.append(Species(f"{name}_{suffix}", *h, body=b[0], body2=b[1], body_pattern=b[2],
                               tint=t, aspect=aspect, head_ratio=ratio))
    return tuple(out)


WORLD_SPECIES = world_species()


def world_scene(seed: int, index: int, size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the world with ``seed``: ``(image uint8 [S, S, 3], labels float32 [K])``
    (1 for each class present)."""
    img, _, birds = draw_scene(np.random.default_rng([WORLD_STREAM, seed, index]), size,
                               WORLD_SPECIES, WORLD_COUNTS)
    labels = np.zeros(len(WORLD_SPECIES), dtype=np.float32)
    for bird in birds:
        labels[bird.cls] = 1.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def world_arrays(count: int, seed: int = 0, size: int = 128, start: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start + count - 1``: ``(uint8 [N, S, S, 3], float32 [N, K])``."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty((count, len(WORLD_SPECIES)), dtype=np.float32)
    for k in range(count):
        images[k], labels[k] = world_scene(seed, start + k, size)
    return images, labels
