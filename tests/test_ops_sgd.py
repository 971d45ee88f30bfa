"""sgd_step_: one SGD step of G weight slots, against the RIB engine's foreach update (the oracle:
torch.optim.SGD's operations, op for op) bit for bit, and the plain-PyTorch reference to a rounding."""
import pytest
import torch

from rib_ext import ops
from rib_ext.ops import _extension, oracle
from rib_ext.sgd import sgd_update_foreach_

# One slot's weights as the head's parameters would lie in it: odd sizes (vector tails), a 4-d
# one, and the classifier's two last (the second learning rate).
SHAPES = [(7, 3, 3, 3), (33,), (1,), (5, 17), (4, 7, 1, 1), (4,)]
SPLIT = sum(torch.Size(s).numel() for s in SHAPES[:-2])
P = sum(torch.Size(s).numel() for s in SHAPES)
HYPER = [dict(weight_decay=1e-4, momentum=0.9), dict(weight_decay=0.0, momentum=0.9),
         dict(weight_decay=5e-4, momentum=0.0), dict(weight_decay=1e-4, momentum=1e-4)]


def views(row: torch.Tensor) -> list[torch.Tensor]:
    """The parameters of one slot: views of its row."""
    out, at = [], 0
    for s in SHAPES:
        n = torch.Size(s).numel()
        out.append(row[at:at + n].view(s))
        at += n
    return out


def slot_lrs(g: int, step: torch.Tensor, dtype, device) -> tuple[list[float], torch.Tensor]:
    """Poly-decayed learning rates per slot (backbone, classifier x 10), as Python floats (what
    the foreach update takes) and as the [G, 2] tensor of the kernel."""
    rates = [0.01 * (1 - int(step[s]) / 12) ** 0.9 for s in range(g)]
    pairs = [(r, r * 10.0) for r in rates]
    return pairs, torch.tensor(pairs, dtype=dtype, device=device)


def run_both(g, steps, dtype, device, hyper, seed=0):
    """``steps`` steps of G slots through sgd_step_ and through the foreach update (separate
    tensors per parameter, buffers made on the first step): both [G, P] weights and buffers."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(g, P, generator=gen, dtype=dtype).to(device)
    params, bufs = start.clone(), torch.zeros_like(start)
    ref_params = [views(r) for r in start.clone()]
    ref_bufs = [[None] * len(SHAPES) for _ in range(g)]
    count = torch.zeros(g, dtype=torch.long)
    for k in range(steps):
        grads = torch.randn(g, P, generator=gen, dtype=dtype).to(device)
        go = torch.rand(g, generator=gen) < 0.75
        go[k % g] = True
        go |= count == 0  # the engine's images step on their first step (no stop precedes it)
        pairs, lrs = slot_lrs(g, count, dtype, device)
        first = count == 0
        ops.sgd_step_(params, bufs, grads, lrs, go.to(device), first.to(device), SPLIT, **hyper)
        flat_p = [p for s in range(g) for p in ref_params[s]]
        flat_g = [x for s in range(g) for x in views(grads[s])]
        flat_b = [b for s in range(g) for b in ref_bufs[s]]
        flat_lr = [pairs[s][i >= len(SHAPES) - 2] for s in range(g) for i in range(len(SHAPES))]
        masks = [go[s].to(device) for s in range(g) for _ in SHAPES]
        # the engine's buffers exist from an image's first step on, stepping or not
        sgd_update_foreach_(flat_p, flat_g, flat_b, flat_lr, hyper["weight_decay"], hyper["momentum"],
                            masks)
        for s in range(g):
            ref_bufs[s] = flat_b[s * len(SHAPES):(s + 1) * len(SHAPES)]
        count += go.long()
    ref_p = torch.stack([torch.cat([p.reshape(-1) for p in ps]) for ps in ref_params])
    ref_b = torch.stack([torch.cat([(b if b is not None else torch.zeros(s, dtype=dtype, device=device))
                                    .reshape(-1) for b, s in zip(bs, SHAPES)]) for bs in ref_bufs])
    return params, bufs, ref_p, ref_b


@pytest.mark.skipif(not ops.HAS_C, reason="the kernels need the compiled extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hyper", HYPER)
def test_kernel_is_the_foreach_update_bit_for_bit(device, dtype, hyper):
    params, bufs, ref_p, ref_b = run_both(3, 6, dtype, device, hyper)
    torch.testing.assert_close(params, ref_p, rtol=0, atol=0)
    if hyper["momentum"]:
        torch.testing.assert_close(bufs, ref_b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_reference_agrees_to_a_rounding(dtype, monkeypatch):
    monkeypatch.setattr(_extension, "use_compiled", lambda op, t: False)
    monkeypatch.setattr("rib_ext.ops.sgd.use_compiled", lambda op, t: False)
    params, bufs, ref_p, ref_b = run_both(4, 5, dtype, "cpu", HYPER[0], seed=1)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(params, ref_p, **tol)
    torch.testing.assert_close(bufs, ref_b, **tol)
    moved = (params - run_both(4, 0, dtype, "cpu", HYPER[0], seed=1)[0]).abs().max()
    assert moved > 1e-3  # the weights did move: a no-op would not pass the comparison above


def test_a_slot_that_does_not_step_is_left_as_it_is_nan_gradient_and_all(device):
    g = 3
    params = torch.randn(g, P, device=device)
    bufs = torch.randn(g, P, device=device)
    grads = torch.randn(g, P, device=device)
    grads[1] = float("nan")
    before_p, before_b = params.clone(), bufs.clone()
    go = torch.tensor([True, False, True], device=device)
    ops.sgd_step_(params, bufs, grads, torch.full((g, 2), 0.1, device=device), go,
                  torch.zeros(g, dtype=torch.bool, device=device), SPLIT, 1e-4, 0.9)
    assert torch.equal(params[1], before_p[1]) and torch.equal(bufs[1], before_b[1])
    assert not torch.equal(params[0], before_p[0]) and not torch.equal(bufs[2], before_b[2])
    assert torch.isfinite(params).all()


def test_the_second_learning_rate_starts_at_split():
    params, bufs = torch.zeros(1, 6), torch.zeros(1, 6)
    ops.sgd_step_(params, bufs, torch.ones(1, 6), torch.tensor([[1.0, 3.0]]), torch.tensor([True]),
                  torch.tensor([True]), 4, 0.0, 0.0)
    assert params.tolist() == [[-1.0, -1.0, -1.0, -1.0, -3.0, -3.0]]


def _good(**change):
    args = dict(params=torch.zeros(2, 5), bufs=torch.zeros(2, 5), grads=torch.zeros(2, 5),
                lrs=torch.zeros(2, 2), go=torch.ones(2, dtype=torch.bool),
                first=torch.ones(2, dtype=torch.bool), split=3)
    args.update(change)
    return args


BAD = [
    (dict(params=torch.zeros(10)), "params must be \\[G, P\\]"),
    (dict(params=torch.zeros(2, 5, dtype=torch.half), bufs=torch.zeros(2, 5, dtype=torch.half),
          grads=torch.zeros(2, 5, dtype=torch.half)), "float32 or float64"),
    (dict(params=torch.zeros(5, 2).t()), "contiguous"),
    (dict(grads=torch.zeros(2, 4)), "params \\[2, 5\\] and grads \\[2, 4\\]"),
    (dict(lrs=torch.zeros(2, 2, dtype=torch.float64)), "params' dtype"),
    (dict(lrs=torch.zeros(2)), "lrs must be \\[G, 2\\]"),
    (dict(go=torch.ones(3, dtype=torch.bool)), "go and first must be bool \\[G\\]"),
    (dict(first=torch.ones(2)), "go and first must be bool"),
    (dict(split=6), "split must be in 0..5"),
]


@pytest.mark.skipif(not ops.HAS_C, reason="the checks are the compiled op's")
@pytest.mark.parametrize("change,message", BAD)
def test_bad_inputs_are_refused_with_a_clear_message(change, message):
    args = _good(**change)
    with pytest.raises(RuntimeError, match=f"sgd_step_: .*{message}"):
        ops.sgd_step_(**args, weight_decay=1e-4, momentum=0.9)


@pytest.mark.skipif(not ops.HAS_C, reason="opcheck needs the compiled extension")
def test_opcheck(device):
    for dtype in (torch.float32, torch.float64):
        g, n = 3, 11
        args = (torch.randn(g, n, dtype=dtype, device=device), torch.randn(g, n, dtype=dtype, device=device),
                torch.randn(g, n, dtype=dtype, device=device), torch.rand(g, 2, dtype=dtype, device=device),
                torch.tensor([True, False, True], device=device),
                torch.tensor([False, False, True], device=device), 7, 1e-4, 0.9)
        torch.library.opcheck(torch.ops.rib_ext.sgd_step_.default, args)


@pytest.mark.skipif(not ops.HAS_C, reason="needs the compiled extension")
def test_wrapper_runs_the_compiled_kernel(device, monkeypatch):
    assert "sgd_step_" in _extension.registered_ops()
    assert ops.backend("sgd_step_", device) == f"compiled-{device}"

    def fallback_called(*a, **k):
        raise AssertionError("the wrapper ran the Python reference, not the kernel")

    monkeypatch.setattr(oracle, "sgd_step_", fallback_called)
    ops.sgd_step_(**_good(**{k: v.to(device) for k, v in _good().items() if torch.is_tensor(v)}),
                  weight_decay=0.0, momentum=0.9)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("hyper", HYPER)
def test_cuda_kernel_equals_the_cpu_kernel(hyper):
    cpu = run_both(5, 6, torch.float32, "cpu", hyper, seed=3)
    cuda = run_both(5, 6, torch.float32, "cuda", hyper, seed=3)
    for a, b in zip(cpu[:2], cuda[:2]):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=0)


@pytest.mark.needs_cuda
def test_cuda_graph_replays_the_step_with_new_learning_rates():
    """Captured once, replayed with other learning rates and flags written into the same device
    tensors: the result of calling the op with those values."""
    g = 4
    params, bufs = torch.randn(g, P, device="cuda"), torch.randn(g, P, device="cuda")
    grads, lrs = torch.randn(g, P, device="cuda"), torch.rand(g, 2, device="cuda")
    go, first = torch.ones(g, dtype=torch.bool, device="cuda"), torch.zeros(g, dtype=torch.bool, device="cuda")
    p2, b2 = params.clone(), bufs.clone()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.sgd_step_(p2.clone(), b2.clone(), grads, lrs, go, first, SPLIT, 1e-4, 0.9)  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        ops.sgd_step_(params, bufs, grads, lrs, go, first, SPLIT, 1e-4, 0.9)
    params.copy_(p2), bufs.copy_(b2)
    lrs.copy_(torch.rand(g, 2, device="cuda"))
    go.copy_(torch.tensor([True, False, True, False]))
    graph.replay()
    ops.sgd_step_(p2, b2, grads, lrs, go, first, SPLIT, 1e-4, 0.9)
    torch.testing.assert_close(params, p2, rtol=0, atol=0)
    torch.testing.assert_close(bufs, b2, rtol=0, atol=0)
