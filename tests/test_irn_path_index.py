"""IRN's path index: directions, paths, source crop and pair affinities, checked by hand."""
import numpy as np
import pytest
import torch

from rib_ext.irn.path_index import (PathIndex, as_paths, count_directions, half_disc_directions,
                                    straight_path)


def test_radius_2_by_hand():
    # Radius 2: offsets with dy^2 + dx^2 < 4 in half the disc (dy > 0, or dy == 0 and dx > 0):
    #   (0, 1); (1, -1), (1, 0), (1, 1)            [(0, 2), (2, 0) have d^2 = 4, not < 4]
    assert half_disc_directions(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    # Paths (destination first). The straight ones are just their two ends. A diagonal step's
    # bounding box is 2x2 and every cell of it lies within distance 1 of the diagonal
    # (the off-diagonal cells at distance 1/sqrt(2)), so the path has 4 cells:
    #   (1, -1): (1,-1), then (0,-1) and (1,0) (L1 = 1, scan order), then (0,0).
    assert straight_path(1, -1) == [(1, -1), (0, -1), (1, 0), (0, 0)]
    index = PathIndex(2)
    # Grouped by path length: the 2-cell paths (0,1), (1,0) first, then the 4-cell diagonals.
    assert index.offsets.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    assert as_paths(index) == [[(0, 1), (0, 0)], [(1, 0), (0, 0)],
                               [(1, -1), (0, -1), (1, 0), (0, 0)],
                               [(1, 1), (0, 1), (1, 0), (0, 0)]]
    assert [g.shape for g in index.path_groups] == [(2, 2, 2), (2, 4, 2)]


def test_longer_paths_by_hand():
    # (0, 3): a row of 4 cells. (1, 2): box 2x3; distance^2 of (y, x) to the line is
    # (1*x - 2*y)^2 / 5 < 1  <=>  |x - 2y| <= 2: (0,0) 0, (0,1) 1, (0,2) 4, (1,0) 4, (1,1) 1, (1,2) 0
    # -> all six cells; sorted by L1 descending, ties in scan order.
    assert straight_path(0, 3) == [(0, 3), (0, 2), (0, 1), (0, 0)]
    assert straight_path(1, 2) == [(1, 2), (0, 2), (1, 1), (0, 1), (1, 0), (0, 0)]
    # (2, 1): |2x - y| <= 2 in the 3x2 box: (0,0),(0,1),(1,0),(1,1),(2,0),(2,1) -> 6 cells too.
    assert sorted(straight_path(2, 1)) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.mark.parametrize("radius,expected", [(2, 4), (3, 12), (5, 34), (10, 152)])
def test_direction_counts(radius, expected):
    # 34 for the random walk's radius 5 (69 neighbours with the pixel itself and the mirror half).
    index = PathIndex(radius)
    assert index.num_directions == expected == count_directions(radius)
    dirs = {tuple(d) for d in index.offsets.tolist()}
    assert len(dirs) == expected and not any((-dy, -dx) in dirs for dy, dx in dirs)


def test_source_crop_and_destinations():
    index = PathIndex(2)  # r_f = 1: sources rows 0..h-2, columns 1..w-2
    g = index.grid(3, 4)
    assert g.src_shape == (2, 2)
    assert g.src.tolist() == [1, 2, 5, 6]  # (0,1) (0,2) (1,1) (1,2) on a 3x4 grid
    # destination of offset (1, -1) from (0, 1) is (1, 0) = flat 4
    d = index.offsets.tolist().index([1, -1])
    assert g.dst[d].tolist() == [4, 5, 8, 9]
    with pytest.raises(ValueError, match="too small"):
        PathIndex(10).grid(10, 18)


def test_affinity_on_a_hand_made_boundary():
    index = PathIndex(2)
    b = torch.zeros(1, 3, 4)
    b[0, 1, 1] = 0.8  # one boundary pixel at (1, 1)
    aff = index.affinity(b)[0]  # [D, N] with sources (0,1) (0,2) (1,1) (1,2)
    offs = index.offsets.tolist()
    # From (0,1): (0,1)->(0,2) avoids (1,1): 1. (0,1)->(1,1) ends on it: 0.2.
    # (0,2)->(1,1) via (1,-1): path (1,1),(0,1),(1,2),(0,2) holds it: 0.2.
    # (0,2)->(1,3) via (1,1): path (1,3),(0,3),(1,2),(0,2): 1.
    # Every pair from the source (1,1) starts on it: 0.2.
    assert aff[offs.index([0, 1]), 0] == pytest.approx(1.0)
    assert aff[offs.index([1, 0]), 0] == pytest.approx(0.2)
    assert aff[offs.index([1, -1]), 1] == pytest.approx(0.2)
    assert aff[offs.index([1, 1]), 1] == pytest.approx(1.0)
    assert torch.allclose(aff[:, 2], torch.full((4,), 0.2))


def _naive_affinity(index, b):
    """Loop oracle: for every source and direction, 1 - max over the path cells."""
    h, w = b.shape
    rf = index.radius_floor
    hs, ws = index.source_shape(h, w)
    out = np.zeros((index.num_directions, hs * ws))
    for d, path in enumerate(as_paths(index)):
        for n, (y, x) in enumerate((y, x) for y in range(hs) for x in range(rf, rf + ws)):
            out[d, n] = 1 - max(b[y + py, x + px] for py, px in path)
    return out


@pytest.mark.parametrize("radius", [3, 5])
def test_vectorised_affinity_matches_loops(radius):
    torch.manual_seed(0)
    b = torch.rand(2, 12, 15, dtype=torch.float64)
    index = PathIndex(radius)
    got = index.affinity(b)
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), _naive_affinity(index, b[i].numpy()))


def test_affinity_gradient_goes_to_the_path_maximum():
    index = PathIndex(2)
    b = torch.zeros(1, 3, 4, dtype=torch.float64)
    b[0, 1, 1] = 0.8
    b.requires_grad_(True)
    aff = index.affinity(b)
    offs = index.offsets.tolist()
    aff[0, offs.index([1, 0]), 0].backward()  # (0,1)->(1,1): maximum at (1,1)
    expected = torch.zeros(1, 3, 4, dtype=torch.float64)
    expected[0, 1, 1] = -1
    assert torch.equal(b.grad, expected)


def test_image_affinity_pairs_leaving_the_image_are_zero():
    index = PathIndex(3)
    aff = index.image_affinity(torch.zeros(1, 4, 5))[0]  # [D, 4, 5], no boundary inside
    for d, (dy, dx) in enumerate(index.offsets.tolist()):
        ys, xs = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
        inside = (ys + dy < 4) & (xs + dx >= 0) & (xs + dx < 5)
        np.testing.assert_array_equal(aff[d].numpy(), inside.astype(np.float32))


def test_bad_radius():
    with pytest.raises(ValueError, match="integer >= 2"):
        PathIndex(1)
    with pytest.raises(ValueError, match="integer >= 2"):
        PathIndex(2.5)
