"""The sparse random walk against the authors' dense matrix power, and what a walk must do."""
import pytest
import torch

from rib_ext.irn.random_walk import (SparseTransition, dense_affinity, propagate_maps, random_walk,
                                     random_walk_dense)


METHODS = ("csr", "shift")


def _inputs(h=7, w=9, k=2, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    boundary = torch.rand(h, w, generator=g, dtype=torch.float64) ** 3
    maps = torch.rand(k, h, w, generator=g, dtype=torch.float64)
    return maps.to(device), boundary.to(device)


# The full 2^8 steps run in test_walk_runs_where_the_tensors_are (both methods) and here for
# "shift"; "csr" repeats them only there, as each sparse product has a fixed cost on a busy CPU.
@pytest.mark.parametrize("method,exp_times", [(m, e) for m in METHODS for e in (0, 1, 3)]
                         + [("shift", 8)])
@pytest.mark.parametrize("radius", [2, 5])
def test_sparse_equals_dense_matrix_power(method, exp_times, radius):
    maps, boundary = _inputs()
    sparse = random_walk(maps, boundary, radius, beta=10, exp_times=exp_times, method=method)
    dense = random_walk_dense(maps, boundary, radius, beta=10, exp_times=exp_times)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)


def test_dense_affinity_is_the_authors_matrix():
    # 1 x 3 grid, radius 2: pairs (0,1) and (1,2) along the row; nothing else is within reach.
    boundary = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    a = dense_affinity(boundary, radius=2, beta=2)
    # each pair's path holds the middle pixel: (1 - 0.5) ** 2
    expected = torch.tensor([[1, .25, 0], [.25, 1, .25], [0, .25, 1]], dtype=torch.float64)
    torch.testing.assert_close(a, expected)


def test_one_step_is_a_weighted_mean_of_the_neighbours():
    boundary = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    x = torch.tensor([[[1.0, 2.0, 4.0]]], dtype=torch.float64)
    y = random_walk(x, boundary, radius=2, beta=2, exp_times=0)
    # column sums of A: 1.25, 1.5, 1.25 -> y_j = sum_i x_i A_ij / colsum_j
    expected = torch.tensor([(1 + .25 * 2) / 1.25, (.25 * 1 + 2 + .25 * 4) / 1.5,
                             (.25 * 2 + 4) / 1.25], dtype=torch.float64)
    torch.testing.assert_close(y[0, 0], expected)


@pytest.mark.parametrize("method", METHODS)
def test_constants_stay_and_degree_weighted_mass_is_conserved(method):
    maps, boundary = _inputs(h=6, w=8, k=1, seed=3)
    ones = torch.ones(1, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(random_walk(ones, boundary, 5, 10, 5, method), ones)
    # A symmetric: sum_j D_j y_j = sum_i D_i x_i with D the column sums (degrees).
    degree = dense_affinity(boundary, 5, 10).sum(0).view(1, 6, 8)
    y = random_walk(maps, boundary, 5, 10, 4, method)
    torch.testing.assert_close((degree * y).sum(), (degree * maps).sum())


@pytest.mark.parametrize("method", METHODS)
def test_a_boundary_wall_stops_the_walk(method):
    h, w = 6, 12
    boundary = torch.zeros(h, w, dtype=torch.float64)
    boundary[:, 6] = 1.0
    x = torch.zeros(1, h, w, dtype=torch.float64)
    x[0, 2, 1] = 1.0  # one seed left of the wall
    y = random_walk(x, boundary, 5, 10, 6, method)
    assert torch.all(y[0, :, 6:] == 0)  # nothing crosses or enters the wall
    left = y[0, :, :6]
    assert left.min() > 0  # ... and the whole left side is reached,
    assert left.max() / left.min() < 1.01  # almost uniformly after 64 steps


@pytest.mark.parametrize("method", METHODS)
def test_classes_walk_independently(method):
    maps, boundary = _inputs(k=3, seed=5)
    together = random_walk(maps, boundary, 5, 10, 3, method)
    alone = torch.cat([random_walk(maps[i:i + 1], boundary, 5, 10, 3, method) for i in range(3)])
    torch.testing.assert_close(together, alone)


def test_transition_columns_are_normalised():
    _, boundary = _inputs(h=5, w=6, seed=1)
    t = SparseTransition(boundary, radius=3, beta=10)
    torch.testing.assert_close(t.weights.sum(0), torch.ones(5, 6, dtype=torch.float64))
    assert t.offsets.shape == (1 + 2 * 12, 2)


def test_propagate_maps_applies_power_and_boundary():
    maps, boundary = _inputs(seed=7)
    got = propagate_maps(maps, boundary, 5, 10, 2, power=1.3)
    expected = random_walk_dense(maps.pow(1.3) * (1 - boundary), boundary, 5, 10, 2)
    torch.testing.assert_close(got, expected)


def test_input_checks():
    maps, boundary = _inputs()
    with pytest.raises(ValueError, match="share the stride-4 grid"):
        random_walk(maps, boundary[:-1])
    with pytest.raises(ValueError, match="unknown random-walk method"):
        random_walk(maps, boundary, method="dense")


def test_walk_runs_where_the_tensors_are(device):
    maps, boundary = _inputs(h=20, w=24, k=2, device=device)
    maps, boundary = maps.float(), boundary.float()
    for method in METHODS:
        y = random_walk(maps, boundary, 5, 10, 8, method)
        assert y.device.type == device
        ref = random_walk_dense(maps.double().cpu(), boundary.double().cpu(), 5, 10, 8)
        # float32 over 256 sequential steps: ~3e-4 relative (the authors' float32 squaring: ~1e-4).
        torch.testing.assert_close(y.double().cpu(), ref, rtol=1e-3, atol=1e-5)
