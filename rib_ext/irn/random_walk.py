"""IRN's random walk on the stride-4 grid, as sparse propagation over the radius-r neighbourhood.

The authors build the transition matrix densely: A[i, j] = aff(i, j) ** beta for pixels within the
radius (A[i, i] = 1, 0 elsewhere), T = A with each column divided by its sum, and the maps become
x @ T^(2^exp_times), T squared exp_times times. For a 500x375 image that is an 11,750^2 matrix and
~13 T multiply-adds. Since A is symmetric, one step y = x @ T reads

    y[j] = sum_i x[i] A[i, j] / sum_i A[i, j]      (a weighted mean over j's neighbours)

so 2^exp_times such steps over the ~69 neighbours of each pixel give the same result with memory
and work linear in the number of pixels. :func:`random_walk_dense` keeps the authors' form as the
reference the tests and the benchmark compare against.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Tuple

import torch

from rib_ext.irn.path_index import PathIndex


@lru_cache(maxsize=8)
def path_index(radius: int) -> PathIndex:
    return PathIndex(radius)


def _check_inputs(x: torch.Tensor, boundary: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected maps [K, h, w], got shape {tuple(x.shape)}")
    if boundary.shape != x.shape[1:]:
        raise ValueError(f"boundary {tuple(boundary.shape)} and maps {tuple(x.shape[1:])} must "
                         f"share the stride-4 grid")


def pair_weights(boundary: torch.Tensor, radius: int, beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(offsets [D, 2], weights [D, h, w]): aff(p, p + offset) ** beta for the half-disc offsets,
    0 where p + offset leaves the image."""
    index = path_index(radius)
    aff = index.image_affinity(boundary.unsqueeze(0))[0]
    return index.offsets_tensor(boundary.device, torch.long), aff.pow(beta)


class SparseTransition:
    """The column-normalised transition of IRN's walk as per-pixel weights of its neighbours.

    ``offsets`` [M, 2] holds (0, 0), the half-disc offsets and their negatives; ``weights`` [M, h, w]
    the normalised weight of neighbour ``p + offsets[m]`` in pixel p's update (summing to 1 over m).
    """

    def __init__(self, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0):
        if boundary.dim() != 2:
            raise ValueError(f"expected boundary [h, w], got shape {tuple(boundary.shape)}")
        self.shape = tuple(boundary.shape)
        self.pad = radius - 1
        half_offsets, w = pair_weights(boundary, radius, beta)
        # A[p, p - d] = A[p - d, p]: the weight stored at the pair's source p - d.
        w_back = self._shift(w, half_offsets)
        self.offsets = torch.cat([torch.zeros_like(half_offsets[:1]), half_offsets, -half_offsets])
        a = torch.cat([torch.ones_like(w[:1]), w, w_back])
        self.weights = a / a.sum(dim=0, keepdim=True)
        self._offset_list = self.offsets.tolist()

    def _padded(self, planes: torch.Tensor) -> torch.Tensor:
        r = self.pad
        return torch.nn.functional.pad(planes, (r, r, r, r))

    def _window(self, padded: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """The [..., h, w] view of a padded tensor holding value (p + (dy, dx)) at p."""
        h, w = self.shape
        r = self.pad
        return padded[..., r + dy:r + dy + h, r + dx:r + dx + w]

    def _shift(self, planes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """out[d, p] = planes[d, p - offsets[d]], 0 outside the image."""
        padded = self._padded(planes)
        return torch.stack([self._window(padded[d], -int(dy), -int(dx))
                            for d, (dy, dx) in enumerate(offsets.tolist())])

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One step y = x @ T for maps [K, h, w], from shifted views of the padded maps."""
        padded = self._padded(x)
        y = torch.zeros_like(x)
        for m, (dy, dx) in enumerate(self._offset_list):
            y.addcmul_(self._window(padded, dy, dx), self.weights[m])
        return y

    def matrix(self) -> torch.Tensor:
        """T^t as a sparse CSR matrix [n, n] (row p holds p's neighbour weights)."""
        h, w = self.shape
        dev = self.weights.device
        ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev),
                                indexing="ij")
        dy, dx = self.offsets[:, 0, None, None], self.offsets[:, 1, None, None]
        ty, tx = ys + dy, xs + dx
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        rows = (ys * w + xs).expand_as(ty)[inside]
        cols = (ty * w + tx)[inside]
        with warnings.catch_warnings():
            # "Sparse CSR support is in beta": matrix @ dense, the one op used here, is stable.
            warnings.simplefilter("ignore", UserWarning)
            coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), self.weights[inside],
                                          (h * w, h * w), check_invariants=False)
            return coo.coalesce().to_sparse_csr()

    def propagate(self, x: torch.Tensor, steps: int, method: str = "auto") -> torch.Tensor:
        """``steps`` steps of the walk on maps [K, h, w].

        ``"shift"``: a multiply-add of a shifted view per neighbour offset (69 at radius 5) per
        step, no sparse kernels; ``"csr"``: one sparse-matrix product per step (one kernel per
        step on GPU; on a CPU shared with other work its thread synchronisation costs
        milliseconds per step, see benchmarks/bench_irn.py).
        ``"auto"``: csr on CUDA, shift elsewhere. Both compute the same sums in another order.
        """
        if method == "auto":
            method = "csr" if x.is_cuda else "shift"
        if method == "shift":
            for _ in range(steps):
                x = self.step(x)
            return x
        if method != "csr":
            raise ValueError(f"unknown random-walk method {method!r}; expected 'auto', 'csr' or "
                             f"'shift'")
        k, h, w = x.shape
        t = self.matrix()
        y = x.reshape(k, h * w).t().contiguous()
        for _ in range(steps):
            y = t @ y
        return y.t().reshape(k, h, w)


def random_walk(x: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
                exp_times: int = 8, method: str = "auto") -> torch.Tensor:
    """x @ T^(2^exp_times) computed sparsely; ``x`` [K, h, w] maps, ``boundary`` [h, w] in [0, 1].

    Runs where the tensors are (CPU or GPU), all K maps at once; ``method`` as in
    :meth:`SparseTransition.propagate`.
    """
    _check_inputs(x, boundary)
    transition = SparseTransition(boundary.to(x.dtype), radius, beta)
    return transition.propagate(x, 2 ** exp_times, method)


def dense_affinity(boundary: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """The authors' dense A [n, n] (n = h * w): aff ** beta within the radius, 1 on the diagonal."""
    h, w = boundary.shape
    offsets, weights = pair_weights(boundary, radius, beta)
    n = h * w
    ys, xs = torch.meshgrid(torch.arange(h, device=boundary.device),
                            torch.arange(w, device=boundary.device), indexing="ij")
    dy, dx = offsets[:, 0, None, None], offsets[:, 1, None, None]
    ty, tx = ys + dy, xs + dx
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    src = (ys * w + xs).expand_as(ty)[inside]
    dst = (ty * w + tx)[inside]
    a = torch.eye(n, dtype=boundary.dtype, device=boundary.device)
    a[src, dst] = weights[inside]
    a[dst, src] = weights[inside]
    return a


def random_walk_dense(x: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
                      exp_times: int = 8) -> torch.Tensor:
    """Reference: the authors' dense transition matrix squared ``exp_times`` times (tests and
    benchmarks only: memory is quadratic in the number of pixels)."""
    _check_inputs(x, boundary)
    k, h, w = x.shape
    a = dense_affinity(boundary.to(x.dtype), radius, beta)
    t = a / a.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        t = t @ t
    return (x.reshape(k, h * w) @ t).view(k, h, w)


def propagate_maps(maps: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
                   exp_times: int = 8, power: float = 1.0, method: str = "auto") -> torch.Tensor:
    """IRN's make_sem_seg walk: maps [K, h, w] (** power first, as RIB's code does) times
    (1 - boundary), then :func:`random_walk`."""
    _check_inputs(maps, boundary)
    maps = maps.to(boundary.dtype)
    if power != 1.0:
        maps = maps.pow(power)
    return random_walk(maps * (1.0 - boundary), boundary, radius, beta, exp_times, method)
