"""The per-image stages after the maps (crf, ir_label, make_sem_seg, eval_mask, segment inference,
visualize's panels) give the same files and figures whatever the number of CRF worker processes and of ranks."""
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rib_ext import distributed
from rib_ext.config import CRFConfig, DemoDataConfig, SegmentConfig
from rib_ext.data import build_dataset
from rib_ext.io import load_npy_dict, save_npy
from rib_ext.irn import IRNConfig, eval_mask_stage, ir_label_stage, make_sem_seg_stage
from rib_ext.crf import refine_seeds as crf
from rib_ext.figures import visualize_run
from rib_ext.workers import resolve_workers, run_tasks
from gloo_ranks import free_port, gloo_rank

pytest.importorskip("pydensecrf.densecrf")

DEMO = DemoDataConfig(seed=3, num_train=4, num_val=7, image_size=64)
IRN = dict(device="cpu", boundary_pad_to=None, exp_times=3, conf_fg=0.35, conf_bg=0.15)
VISUAL_PANELS = 5  # of the 7 images: both ranks draw some
FIGURES = ("miou", "per_class_iou", "num_images", "precision", "recall", "f1")


def _noisy_maps(ds, folder: Path, seed: int = 0) -> Path:
    """IRN map files from the ground truth, blurred by noise so that the CRF has work to do."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(ds.ids):
        mask = ds.mask(i)
        keys = np.nonzero(ds.labels(i))[0]
        high = np.stack([(mask == k + 1) * 0.8 + rng.random(mask.shape) * 0.4 for k in keys])
        high = (high / high.max(axis=(1, 2), keepdims=True)).astype(np.float32)
        save_npy(folder / f"{name}.npy", {"keys": keys, "high_res": high,
                                          "cam": torch.from_numpy(high[:, ::4, ::4].copy())})
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(demo root, maps folder, IRN checkpoint, DeepLab checkpoint), made once."""
    from rib_ext.irn import build_irnet, save_irnet
    from rib_ext.segment.model import build_deeplab, save_deeplab

    base = tmp_path_factory.mktemp("sharding")
    ds = build_dataset("demo", base / "demo", "val", demo=DEMO)
    maps = _noisy_maps(ds, base / "maps")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: a smoke-test network on purpose
        save_irnet(base / "irn.pth", build_irnet("resnet18", random_init=True))
        save_deeplab(base / "deeplab.pth", build_deeplab("resnet18", ds.num_classes + 1,
                                                         random_init=True))
    return base / "demo", maps, base / "irn.pth", base / "deeplab.pth"


def _pngs(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


def _figures(folder: Path) -> dict:
    result = json.loads((Path(folder) / "result.json").read_text())
    return {k: result.get(k) for k in FIGURES}


# ------------------------------------------------------------------------------- worker pool

def _square(offset, x):
    if x == 13:
        raise ValueError(f"bad item {x}")
    return x * x + offset


def test_run_tasks_gives_every_result_once_in_a_pool_and_alone():
    alone = dict(run_tasks(_square, 1, range(10), workers=1))
    pooled = dict(run_tasks(_square, 1, range(10), workers=2, window=3))
    assert alone == pooled == {x: x * x + 1 for x in range(10)}


def test_run_tasks_raises_a_worker_error_here():
    with pytest.raises(ValueError, match="bad item 13"):
        list(run_tasks(_square, 0, range(20), workers=2))


def test_worker_count_defaults_to_the_cores_shared_among_local_ranks(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(None) == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))
    assert resolve_workers(None) == 1
    assert resolve_workers(0) == resolve_workers(1) == 1 and resolve_workers(3) == 3
    with pytest.raises(ValueError, match="-1"):
        resolve_workers(-1)


# --------------------------------------------------------------------- 1 worker vs 2 workers

def test_crf_and_ir_label_same_files_with_one_or_two_workers(inputs, tmp_path):
    root, maps, _, _ = inputs
    ds = build_dataset("demo", root, "val", demo=DEMO)
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = crf(ds, maps, 0.3, CRFConfig(), out / "crf", workers=workers)
        assert result["written"] == len(ds)
        summary = ir_label_stage(ds, maps, out / "ir_label", IRNConfig(**IRN), workers=workers)
        assert summary["written"] == len(ds)
    one, two = tmp_path / "w1", tmp_path / "w2"
    assert len(_pngs(one / "crf" / "masks")) == len(ds)
    assert _pngs(one / "crf" / "masks") == _pngs(two / "crf" / "masks")
    assert _pngs(one / "ir_label") == _pngs(two / "ir_label")
    assert _figures(one / "crf") == _figures(two / "crf")
    np.testing.assert_array_equal(np.load(one / "crf" / "confusion.npy"),
                                  np.load(two / "crf" / "confusion.npy"))
    # The masks are not all background: the comparison says something.
    assert 0 < _figures(one / "crf")["miou"] < 1


def test_crf_rerun_reads_its_masks_back_and_scores_the_same(inputs, tmp_path):
    root, maps, _, _ = inputs
    ds = build_dataset("demo", root, "val", demo=DEMO)
    first = crf(ds, maps, 0.3, CRFConfig(), tmp_path, workers=2)
    again = crf(ds, maps, 0.3, CRFConfig(), tmp_path, workers=2)
    assert first["written"] == len(ds) and again["written"] == 0
    assert {k: again[k] for k in FIGURES} == {k: first[k] for k in FIGURES}


def test_crf_worker_error_names_the_file(inputs, tmp_path):
    root, maps, _, _ = inputs
    ds = build_dataset("demo", root, "val", demo=DEMO)
    broken = tmp_path / "maps"
    broken.mkdir()
    for p in maps.glob("*.npy"):
        (broken / p.name).write_bytes(p.read_bytes())
    bad = broken / f"{ds.ids[3]}.npy"
    bad.write_bytes(b"not a map")
    with pytest.raises(Exception, match=ds.ids[3]):
        crf(ds, broken, 0.3, CRFConfig(), tmp_path / "crf", workers=2)
    # Whatever was written is whole: every PNG there reads back as its image's mask.
    from rib_ext.data import load_label_png
    index = {name: i for i, name in enumerate(ds.ids)}
    for png in (tmp_path / "crf" / "masks").glob("*.png"):
        assert load_label_png(png).shape == ds.mask(index[png.stem]).shape
    assert not (tmp_path / "crf" / "masks" / f"{ds.ids[3]}.png").exists()


# ---------------------------------------------------------------------- 2 ranks vs 1 process

def _stages(root, maps, irn_path, seg_path, out, workers):
    """crf, ir_label, make_sem_seg, eval_mask and segment inference, as the pipeline chains them."""
    from rib_ext.segment.infer import infer_stage
    from rib_ext.segment.model import load_deeplab

    out = Path(out)
    ds = build_dataset("demo", root, "val", demo=DEMO)
    crf(ds, maps, 0.3, CRFConfig(), out / "crf", workers=workers)
    ir_label_stage(ds, maps, out / "ir_label", IRNConfig(**IRN), workers=workers)
    make_sem_seg_stage(ds, maps, irn_path, out / "sem_seg", IRNConfig(**IRN), score_dir=out / "scores")
    eval_mask_stage(ds, out / "sem_seg", out / "eval_mask", IRNConfig(**IRN))
    seg = SegmentConfig(backbone="resnet18", random_init=True, scales=(1.0,), use_crf=True,
                        device="cpu")
    infer_stage(load_deeplab(seg_path), ds, out / "segment", seg, model_path=seg_path)
    # The visualize stage's panels (of out/make_cam/maps, a link the test made), its share per rank.
    visualize_run(out, ds, count=VISUAL_PANELS, rank=distributed.rank(), world=distributed.world_size())


def _rank_main(rank, world, port, *args):
    with gloo_rank(rank, world, port):
        _stages(*args)


@pytest.mark.slow  # several ranks
def test_two_gloo_ranks_match_one_process(inputs, tmp_path):
    """Each rank takes its shard of every stage (and two CRF workers within a rank); the files
    are byte for byte a single process's, the figures (summed confusion counts) equal."""
    root, maps, irn_path, seg_path = inputs
    for run in ("single", "multi"):
        (tmp_path / run / "make_cam").mkdir(parents=True)
        (tmp_path / run / "make_cam" / "maps").symlink_to(maps, target_is_directory=True)
    _stages(root, maps, irn_path, seg_path, tmp_path / "single", 1)
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port(), root, maps, irn_path, seg_path,
                                                  str(tmp_path / "multi"), 2), nprocs=2, join=True)
    one, two = tmp_path / "single", tmp_path / "multi"
    n = len(build_dataset("demo", root, "val", demo=DEMO))
    for folder in ("crf/masks", "ir_label", "sem_seg", "segment/val/predictions"):
        assert len(_pngs(one / folder)) == n, folder
        assert _pngs(one / folder) == _pngs(two / folder), folder
    assert len(_pngs(one / "visualize/images")) == VISUAL_PANELS
    assert _pngs(one / "visualize/images") == _pngs(two / "visualize/images")
    # The random-walk scores come from IRN's network, run with each process's intra-op threads
    # (one per rank here, as torchrun sets OMP_NUM_THREADS=1; the machine's count alone): a
    # convolution summed in another order rounds differently, by one float16 step at most here.
    # The masks taken from them are byte for byte the same (above).
    names = sorted(p.name for p in (one / "scores").glob("*.npy"))
    assert len(names) == n
    for name in names:
        a, b = load_npy_dict(one / "scores" / name), load_npy_dict(two / "scores" / name)
        np.testing.assert_array_equal(a["keys"], b["keys"])
        np.testing.assert_allclose(a["score"].astype(np.float32), b["score"].astype(np.float32),
                                   rtol=2e-3, atol=1e-4)
    for folder in ("crf", "eval_mask", "segment/val"):
        assert _figures(one / folder) == _figures(two / folder), folder
        np.testing.assert_array_equal(np.load(one / folder / "confusion.npy"),
                                      np.load(two / folder / "confusion.npy"))
        assert _figures(two / folder)["num_images"] == n


# ------------------------------------------------------------- a rank killed mid-stage (torchrun)

RUN = ["--stages", "make_cam,rib,eval_seed,crf,ir_label", "--demo-images", "8",
       "--demo-val-images", "8", "--demo-size", "48", "--rib-steps", "2", "--num-others", "2",
       "--device", "cpu", "--cpu_workers", "2"]
RUN_DEMO = DemoDataConfig(num_train=8, num_val=8, image_size=48)


def _torchrun(out: Path, checkpoint: Path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "rib_ext.pipeline", "--out", str(out),
           "--cam-checkpoint", str(checkpoint)] + RUN
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _descendants(pid: int) -> list:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out += [int(child)] + _descendants(int(child))
    return out


def _rank_pid(agent: int, rank: int) -> int:
    """The process torchrun started for ``rank`` (its environment says RANK=<rank>)."""
    for pid in _descendants(agent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no process of rank {rank} under {agent}")


def _map_files(out: Path) -> dict:
    return {f"{stage}/{p.name}": load_npy_dict(p)
            for stage in ("make_cam", "rib") for p in sorted((out / stage / "maps").glob("*.npy"))}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's ranks in /proc")
def test_rank_killed_mid_stage_leaves_whole_files_and_a_rerun_reaches_the_clean_maps(tmp_path):
    """kill -9 of rank 1 while rib adapts its shard: every map and record on disk is whole; the
    same torchrun command run again finishes the stage and the next ones (eval_seed, then crf and
    ir_label on both ranks with 2 CRF workers each), and the maps, masks, labels and figures equal
    a clean run's."""
    import signal
    import time

    from factories import tiny_cam_net
    from rib_ext.models import save_cam_net

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for out in (killed, clean):  # the demo generated beforehand (the fresh-out race is not this test's)
        ds = build_dataset("demo", out / "data", "val", demo=RUN_DEMO)
    save_cam_net(tmp_path / "cam.pth", tiny_cam_net(ds.num_classes))
    rank1 = set(ds.ids[1::2])  # distributed.shard: interleaved

    proc = _torchrun(killed, tmp_path / "cam.pth")
    maps = killed / "rib" / "maps"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = {p.stem for p in maps.glob("*.npy")} if maps.is_dir() else set()
        if done and len(done & rank1) < len(rank1) - 1:
            os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
            break
        time.sleep(0.05)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, f"the run was not killed mid-stage:\n{log[-3000:]}"
    left = _map_files(killed)  # every file loads: nothing half-written under a final name
    assert 0 < sum(k.startswith("rib/") for k in left) < len(ds), sorted(left)
    for record in (killed / "rib" / "records").glob("*.json"):
        json.loads(record.read_text())

    for out in (killed, clean):
        proc = _torchrun(out, tmp_path / "cam.pth")
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, log[-3000:]
    resumed, straight = _map_files(killed), _map_files(clean)
    assert sorted(resumed) == sorted(straight) and len(straight) == 2 * len(ds)
    # Bit for bit: each image is adapted alone (group_size 1) with random draws seeded by its
    # position in the list, under the same thread count (torchrun's OMP_NUM_THREADS=1), so an
    # image adapted after the rerun is computed exactly as in the clean run.
    for key in straight:
        for field in ("keys", "cam", "high_res"):
            assert np.array_equal(np.asarray(resumed[key][field]), np.asarray(straight[key][field])), key
    def records(out):  # what each adaptation did, less its timing
        lines = (out / "rib" / "records.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    assert records(killed) == records(clean) and len(records(clean)) == len(ds)
    for folder in ("crf/cam/masks", "crf/rib/masks", "ir_label/cam", "ir_label/rib"):
        assert len(_pngs(clean / folder)) == len(ds), folder
        assert _pngs(killed / folder) == _pngs(clean / folder), folder
    for folder in ("eval_seed/rib", "crf/rib"):
        assert _figures(killed / folder) == _figures(clean / folder), folder


def _two_ranks(script: str):
    """(process, its output) of ``script`` run as ranks 0 and 1 of a gloo group (torchrun's
    variables), each after it has ended."""
    import subprocess
    import sys

    port = free_port()
    procs = []
    for r in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r),
                   WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return [(proc, proc.communicate(timeout=120)[0]) for proc in procs]


_CLOSE_CHECK = """
import atexit, os, sys
import torch.distributed as dist
# Registered first, so it runs after the package's own exit handlers (atexit is last in, first out).
atexit.register(lambda: print("group alive at exit:", dist.is_initialized(), flush=True))
from rib_ext import distributed
assert distributed.init_from_env(60)
distributed.all_reduce_sum(__import__("numpy").ones(2))
# Rank 0 (serving the store) reaches the last barrier last and leaves it at once, while rank 1
# polls the store slowly: it looks again after rank 0's work is over.
if distributed.rank() == 0:
    __import__("time").sleep(2.0)
distributed.barrier("the end", poll_s=4.0)
print("past the last barrier", flush=True)
"""


def test_the_group_a_run_made_is_destroyed_before_the_interpreter_ends(tmp_path):
    """A gloo group left alive at exit can abort a finished rank ("terminate called without an
    active exception", exit -6): the group init_from_env made is destroyed by an exit handler,
    and the rank serving the store waits there for the others, which may still be polling it in
    their last barrier."""
    for proc, out in _two_ranks(_CLOSE_CHECK):
        assert proc.returncode == 0, out
        assert "past the last barrier" in out and "group alive at exit: False" in out, out


_LEAVE_CHECK = """
import atexit
atexit.register(lambda: print("teardown ran", flush=True))
from rib_ext import distributed
assert distributed.init_from_env(60)
distributed.barrier("work done")
print("written", end="")  # no newline: leave() must flush it
distributed.leave(3)
"""


def test_a_finished_rank_leaves_with_its_status_and_without_the_teardown():
    """``python -m rib_ext.pipeline`` under torchrun ends each rank with distributed.leave: the
    status given, the output flushed, the group closed, and no interpreter teardown (which can
    abort a finished rank)."""
    for proc, out in _two_ranks(_LEAVE_CHECK):
        assert proc.returncode == 3, out
        assert "written" in out and "teardown ran" not in out, out
