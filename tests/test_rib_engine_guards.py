"""What the RIB engine and make_cam must never do to a run or to their caller: a graph capture
racing the engine's own worker threads, a failed capture ending the run, TF32 in a float32
backward pass, the caller's model changed."""
import dataclasses
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from factories import TinyDataset, tiny_cam_net
from rib_ext.config import RIBConfig
from rib_ext.rib import OtherImages, RIBEngine, Target
from rib_ext.rib.staging import DEVICE_WORK, DeviceWorkGate


pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(**kw):
    base = dict(steps=2, lr=0.02, num_others=2, other_resize_long=(40, 56), other_crop=40,
                margin=1e9, scales=(1.0, 1.5), loss_scales=(1.0, 1.5), group_size=2)
    base.update(kw)
    return RIBConfig.preset(behaviour="authors", **base)


@pytest.fixture(scope="module")
def setup():
    data = TinyDataset(n=6, k=4)
    model = tiny_cam_net(k=4)
    pool = OtherImages(data, "cpu", resize_long=(40, 56), crop=40)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in range(4)]
    return data, model, pool, targets


def _run(engine, targets):
    return sorted(engine.run(targets), key=lambda r: r.name)


def _same(a_results, b_results):
    for a, b in zip(a_results, b_results, strict=True):
        assert a.record["steps"] == b.record["steps"] and a.record["stop"] == b.record["stop"]
        np.testing.assert_array_equal(a.maps["high_res"], b.maps["high_res"])


def _graphed_engine(model, pool, cfg):
    """An engine on the CPU that takes the graphed paths (the capture is stood in for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cuda_graphs "ignored on cpu": turned on by hand below
        engine = RIBEngine(model, pool, dataclasses.replace(cfg, cuda_graphs=True,
                                                            cuda_graph_targets=True), "cpu")
    engine.graphs = {}  # as cuda_graphs does on CUDA
    return engine


def test_no_worker_thread_works_on_the_device_during_a_capture(setup, monkeypatch):
    """The prefetch thread builds the other images and the lookahead thread prepares the next
    target while the main thread captures graphs: each capture must find both at rest. The
    preparations are slowed so that, unguarded, a capture lands while one is under way."""
    from rib_ext.rib import graphs as graphs_mod
    from rib_ext.rib.targets import TargetViews

    _, model, pool, targets = setup
    busy = []  # threads inside a preparation now
    seen = []  # per capture: the preparations under way when it began, and when it ended

    def slowed(fn):
        def run(*args, **kwargs):
            busy.append(threading.current_thread().name)
            try:
                time.sleep(0.05)
                return fn(*args, **kwargs)
            finally:
                busy.remove(threading.current_thread().name)
        return run

    def stand_in(fn, args, warmup=3):
        before = list(busy)
        time.sleep(0.08)  # a capture takes a while; a preparation started now would show
        seen.append((before, list(busy)))
        return fn

    monkeypatch.setattr(OtherImages, "batch", slowed(OtherImages.batch))
    monkeypatch.setattr(TargetViews, "prepare", slowed(TargetViews.prepare))
    monkeypatch.setattr(graphs_mod, "capture_graphed", stand_in)
    cfg = small_cfg(prefetch="on")
    engine = _graphed_engine(model, pool, cfg)
    results = _run(engine, targets)
    assert len(seen) == len(targets) + 1  # one capture per target, one for the group of 2
    assert all(before == [] and after == [] for before, after in seen), seen
    assert DEVICE_WORK.busy_threads() == 0
    _same(results, _run(RIBEngine(model, pool, cfg, "cpu"), targets))


def test_gate_waits_for_work_under_way_and_holds_new_work_back():
    gate = DeviceWorkGate()
    events = []
    started, release = threading.Event(), threading.Event()

    def worker():
        with gate.work():
            started.set()
            release.wait(5)
            events.append("work done")

    t = threading.Thread(target=worker)
    t.start()
    started.wait(5)
    threading.Timer(0.1, release.set).start()
    with gate.exclusive():
        events.append("capture")
        assert gate.busy_threads() == 0
        with gate.work():  # the holder itself may work (no deadlock)
            pass
        blocked = threading.Thread(target=lambda: _work_once(gate, events))
        blocked.start()
        time.sleep(0.1)
        assert "late work" not in events  # held back while the capture runs
    blocked.join(5)
    t.join(5)
    assert events == ["work done", "capture", "late work"]


def _work_once(gate, events):
    with gate.work():
        events.append("late work")


@pytest.mark.parametrize("which", ["targets", "others"])
def test_a_failed_capture_turns_graphs_off_and_the_run_goes_on_with_the_same_maps(
        setup, monkeypatch, which):
    from rib_ext.rib import graphs as graphs_mod

    _, model, pool, targets = setup
    calls = []

    def failing(fn, args, warmup=3):
        calls.append(warmup)
        # warm-up 1: a target's passes; 3: the other images' pass of the group
        if (warmup == 1) == (which == "targets"):
            raise RuntimeError("operation not permitted when stream is capturing")
        return fn

    monkeypatch.setattr(graphs_mod, "capture_graphed", failing)
    cfg = small_cfg(steps=3)
    engine = _graphed_engine(model, pool, cfg)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed .*RuntimeError: operation "
                                            "not permitted when stream is capturing.*eagerly"):
        results = _run(engine, targets)
    assert engine.graph_error.startswith("RuntimeError") and engine.graphs == {}
    assert calls[-1] == (1 if which == "targets" else 3)  # none tried after the failure
    assert calls.count(calls[-1]) == 1
    _same(results, _run(RIBEngine(model, pool, cfg, "cpu"), targets))


@pytest.mark.parametrize("graphed", [False, True])
def test_float32_backward_runs_without_tf32(setup, monkeypatch, graphed):
    """precision float32: the TF32 flags are off in the backward pass too (a hook inside the
    backward reads them), with PyTorch's defaults set around the run to allow TF32."""
    from rib_ext.rib import graphs as graphs_mod

    _, model, pool, targets = setup
    model = tiny_cam_net(k=4)
    seen = []

    def read_flags(grad):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))

    def forward_hook(module, inputs, output):
        if output.requires_grad:
            output.register_hook(read_flags)

    model.stage4.register_forward_hook(forward_hook)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        cfg = small_cfg(steps=1, head_batching="loop")
        if graphed:
            monkeypatch.setattr(graphs_mod, "capture_graphed", lambda fn, args, warmup=3: fn)
            engine = _graphed_engine(model, pool, cfg)
        else:
            engine = RIBEngine(model, pool, cfg, "cpu")
        engine.run(targets[:2])
        assert seen and all(flags == (False, False) for flags in seen), seen
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
        seen.clear()
        engine = RIBEngine(model, pool, dataclasses.replace(cfg, precision="tf32"), "cpu")
        engine.run(targets[:1])
        assert seen and all(flags == (True, True) for flags in seen), seen
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model_state(model):
    return {"training": [m.training for m in model.modules()],
            "params": {n: (p.detach().clone(), p.requires_grad, p.is_contiguous(),
                           p.is_contiguous(memory_format=torch.channels_last) and p.dim() == 4
                           and not p.is_contiguous())
                       for n, p in model.named_parameters()},
            "buffers": {n: b.clone() for n, b in model.named_buffers()}}


def _assert_unchanged(before, model):
    after = _model_state(model)
    assert after["training"] == before["training"]
    for n, (value, grad, contiguous, channels_last) in before["params"].items():
        v2, g2, c2, cl2 = after["params"][n]
        assert (g2, c2, cl2) == (grad, contiguous, channels_last), n
        assert torch.equal(v2, value), n
    for n, b in before["buffers"].items():
        assert torch.equal(after["buffers"][n], b), n


def test_the_engine_leaves_the_callers_model_as_it_was(setup):
    _, _, pool, targets = setup
    model = tiny_cam_net(k=4).train()  # in training mode, some weights frozen
    model.stage3.layer3[1].conv2.weight.requires_grad_(False)
    before = _model_state(model)
    cfg = small_cfg(steps=1, group_size=1, fold_stem=False, channels_last=True)
    RIBEngine(model, pool, cfg, "cpu").run(targets[:1])
    _assert_unchanged(before, model)


def test_make_cam_leaves_the_callers_model_as_it_was(setup, tmp_path):
    from rib_ext.cam.maps import make_cam
    from rib_ext.config import MakeCamConfig

    data, _, _, _ = setup
    model = tiny_cam_net(k=4).train()
    before = _model_state(model)
    cfg = MakeCamConfig(device="cpu", channels_last=True, scales=(1.0,), num_workers=0)
    out = make_cam(model, _Named(data, 2), cfg, tmp_path / "cams")
    assert out["written"] == 2
    _assert_unchanged(before, model)


class _Named:
    """The first ``n`` images of a TinyDataset with the inference interface make_cam reads."""

    def __init__(self, data, n):
        self.data, self.n = data, n
        self.ids = list(data.ids[:n])

    def __len__(self):
        return self.n

    def __getattr__(self, name):
        return getattr(self.data, name)
