"""IRN's path index: pixel pairs within a radius on the stride-4 grid, and the pixels between them.

A pair (p, p + d) is taken once, for d in half the disc (dy > 0, or dy == 0 and dx > 0) with
dy^2 + dx^2 < radius^2. Its path is every grid cell in the bounding box of 0 and d whose distance
to the line through 0 and d is below one cell, both ends included. The affinity of the pair is
1 - the largest boundary probability on its path, so a boundary anywhere between two pixels (or on
either of them) separates them.

Directions are grouped by path length (shortest first) so that each group's paths stack into one
index tensor; the order of ``offsets`` (and of every ``[.., D, ..]`` axis here) is that grouping,
which is also the order of IRN's ``path_dst``.

Source pixels follow IRN's crop of a grid of size (h, w): rows ``0 .. h - r_f - 1`` and columns
``r_f .. w - r_f - 1`` with ``r_f = radius - 1``, the largest box whose every pair stays on the grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def half_disc_directions(radius: int) -> List[Tuple[int, int]]:
    """Offsets (dy, dx) with dy^2 + dx^2 < radius^2 in half the disc, in IRN's order."""
    radius = _check_radius(radius)
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius)
             if x * x + y * y < radius * radius]
    return dirs


def straight_path(dy: int, dx: int) -> List[Tuple[int, int]]:
    """Cells (y, x) on the segment from (0, 0) to (dy, dx), the destination first.

    A cell of the bounding box is on the path when its squared distance to the line through the
    two ends is below 1; ties in the sort keep the row-major scan order, as IRN's sort does.
    """
    if (dy, dx) == (0, 0):
        raise ValueError("a path needs two distinct ends; got the offset (0, 0)")
    length_sq = dy * dy + dx * dx
    ys = range(min(0, dy), max(0, dy) + 1)
    xs = range(min(0, dx), max(0, dx) + 1)
    cells = [(y, x) for y in ys for x in xs if (dy * x - dx * y) ** 2 < length_sq]
    return sorted(cells, key=lambda c: -abs(c[0]) - abs(c[1]))


def _check_radius(radius) -> int:
    if int(radius) != radius or radius < 2:
        raise ValueError(f"path radius must be an integer >= 2, got {radius}")
    return int(radius)


@dataclass(frozen=True)
class GridIndex:
    """Flat indices into an (h, w) grid for one :class:`PathIndex`.

    ``src`` [N]: the source pixels (row-major over ``src_shape``); ``dst`` [D, N]: each pair's other
    end; ``paths``: per length group, [n_g, L_g, N] indices of the path cells (destination first).
    """

    src: torch.Tensor
    dst: torch.Tensor
    paths: Tuple[torch.Tensor, ...]
    src_shape: Tuple[int, int]


class PathIndex:
    """Pairs within ``radius`` and their paths; indices for a grid size are built once and cached."""

    def __init__(self, radius: int):
        self.radius = _check_radius(radius)
        self.radius_floor = self.radius - 1
        by_length: Dict[int, List[List[Tuple[int, int]]]] = {}
        for d in half_disc_directions(self.radius):
            path = straight_path(*d)
            by_length.setdefault(len(path), []).append(path)
        # [n_g, L_g, 2] per group, shortest paths first.
        self.path_groups: Tuple[np.ndarray, ...] = tuple(
            np.asarray(by_length[n], dtype=np.int64) for n in sorted(by_length))
        self.offsets: np.ndarray = np.concatenate([g[:, 0] for g in self.path_groups])  # [D, 2]
        self._grids: Dict[tuple, GridIndex] = {}

    def __repr__(self) -> str:
        return f"PathIndex(radius={self.radius}, {self.num_directions} directions)"

    @property
    def num_directions(self) -> int:
        return len(self.offsets)

    def source_shape(self, h: int, w: int) -> Tuple[int, int]:
        hs, ws = h - self.radius_floor, w - 2 * self.radius_floor
        if hs < 1 or ws < 1:
            raise ValueError(f"a {h}x{w} grid is too small for path radius {self.radius}: it needs "
                             f"at least {self.radius_floor + 1} rows and {2 * self.radius_floor + 1} "
                             f"columns (at stride 4: an input of at least "
                             f"{4 * (2 * self.radius_floor + 1)} pixels a side)")
        return hs, ws

    def grid(self, h: int, w: int, device: torch.device | str = "cpu") -> GridIndex:
        key = (int(h), int(w), str(torch.device(device)))
        if key not in self._grids:
            self._grids[key] = self._build_grid(int(h), int(w), torch.device(device))
        return self._grids[key]

    def _build_grid(self, h: int, w: int, device: torch.device) -> GridIndex:
        hs, ws = self.source_shape(h, w)
        rf = self.radius_floor
        sy, sx = np.meshgrid(np.arange(hs), np.arange(rf, rf + ws), indexing="ij")
        sy, sx = sy.reshape(-1), sx.reshape(-1)

        def flat(coords: np.ndarray) -> torch.Tensor:
            # coords [..., 2] offsets -> [..., N] flat indices of (source + offset)
            idx = (coords[..., :1] + sy) * w + (coords[..., 1:] + sx)
            return torch.from_numpy(idx).to(device)

        paths = tuple(flat(g) for g in self.path_groups)
        return GridIndex(src=torch.from_numpy(sy * w + sx).to(device), dst=flat(self.offsets),
                         paths=paths, src_shape=(hs, ws))

    # ------------------------------------------------------------------------------------ values

    def path_max(self, values: torch.Tensor) -> torch.Tensor:
        """[B, h, w] -> [B, D, N]: the largest value on each pair's path.

        With autograd the maximum is located without gradient and then gathered, so backward keeps
        one index per pair instead of every path cell ([B, D, L, N] would be gigabytes at crop 512).
        The gradient goes to the winning cell, as max-pooling's does.
        """
        if values.dim() != 3:
            raise ValueError(f"expected values [B, h, w], got shape {tuple(values.shape)}")
        b, h, w = values.shape
        g = self.grid(h, w, values.device)
        flat = values.reshape(b, h * w)
        if not (torch.is_grad_enabled() and values.requires_grad):
            return torch.cat([flat[:, idx].amax(dim=2) for idx in g.paths], dim=1)
        with torch.no_grad():
            winners = torch.cat([_argmax_cells(flat, idx) for idx in g.paths], dim=1)
        return flat.gather(1, winners.reshape(b, -1)).view(b, self.num_directions, -1)

    def affinity(self, boundary: torch.Tensor) -> torch.Tensor:
        """[B, h, w] boundary probabilities -> [B, D, N] pair affinities on IRN's source crop."""
        return 1.0 - self.path_max(boundary)

    def image_affinity(self, boundary: torch.Tensor) -> torch.Tensor:
        """[B, h, w] -> [B, D, h, w]: the affinity of (p, p + offset[d]) for every pixel p.

        The grid is padded with boundary 1 (left, right, bottom by r_f; the half disc never looks
        up), so that every pixel is a source and pairs leaving the image get affinity 0, as in
        IRN's random walk.
        """
        if boundary.dim() != 3:
            raise ValueError(f"expected boundary [B, h, w], got shape {tuple(boundary.shape)}")
        b, h, w = boundary.shape
        rf = self.radius_floor
        padded = F.pad(boundary, (rf, rf, 0, rf), value=1.0)
        return self.affinity(padded).view(b, self.num_directions, h, w)

    def pair_gather(self, values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[B, C, h, w] -> (source values [B, C, 1, N], destination values [B, C, D, N])."""
        b, c, h, w = values.shape
        g = self.grid(h, w, values.device)
        flat = values.reshape(b, c, h * w)
        return flat[:, :, g.src].unsqueeze(2), flat[:, :, g.dst]

    def offsets_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """[D, 2] (dy, dx) of every direction."""
        return torch.as_tensor(self.offsets, dtype=dtype, device=device)


def _argmax_cells(flat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B, n_g, N] flat index of the largest value on each path of one length group."""
    vals = flat[:, idx]  # [B, n_g, L_g, N]
    arg = vals.argmax(dim=2, keepdim=True)
    return idx.expand(flat.shape[0], *idx.shape).gather(2, arg).squeeze(2)


def count_directions(radius: int) -> int:
    """Number of half-disc directions: (lattice points with y^2 + x^2 < r^2, minus the origin) / 2."""
    r = _check_radius(radius)
    ys, xs = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    return int(((ys ** 2 + xs ** 2) < r * r).sum() - 1) // 2


def as_paths(index: PathIndex) -> List[Sequence[Tuple[int, int]]]:
    """Every direction's path as a list of (dy, dx) cells, in ``offsets`` order (for inspection)."""
    return [[tuple(int(v) for v in cell) for cell in path]
            for group in index.path_groups for path in group]
