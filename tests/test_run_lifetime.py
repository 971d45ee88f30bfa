"""A run's processes: pool workers die with their parent, never keep the run lock, and SIGTERM
stops a run as Ctrl-C does (a message, exit 143, a rerun resumes to the same result)."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rib_ext.runlock import RunLock, RunLockedError
from pipeline_runs import TINY, copy_run, finish_run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _children(pid: int) -> list:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _nap(started) -> None:
    started.set()
    time.sleep(30)


def test_a_forked_child_does_not_keep_the_run_lock(tmp_path):
    lock = RunLock(tmp_path).acquire()
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    child = fork.Process(target=_nap, args=(started,))
    child.start()
    try:
        assert started.wait(30)
        lock.release()
        RunLock(tmp_path).acquire().release()  # the child, still running, holds nothing
    except RunLockedError as err:
        pytest.fail(f"a forked child kept the run lock: {err}")
    finally:
        child.kill()
        child.join()


POOL = """
import sys, time
from rib_ext.workers import run_tasks
def nap(_, i):
    time.sleep(120)
for _ in run_tasks(nap, None, range(4), workers=2):
    pass
"""


def test_pool_workers_die_with_a_parent_killed_with_9():
    parent = subprocess.Popen([sys.executable, "-c", POOL], env=ENV)
    try:
        assert _wait_for(lambda: len(_children(parent.pid)) >= 2, 60), "no workers started"
        workers = _children(parent.pid)
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not any(_alive(w) for w in workers), 5), \
            f"workers {[w for w in workers if _alive(w)]} outlived their parent"
    finally:
        parent.kill()
        for w in _children(parent.pid):
            os.kill(w, signal.SIGKILL)


# The pipeline with a slow CRF (each image waits first), so that a signal finds it mid-stage.
SLOW_CRF = """
import sys, time
import rib_ext.crf as crf
real = crf.crf_from_maps
def slow(*a, **kw):
    time.sleep(float(sys.argv[1]))
    return real(*a, **kw)
crf.crf_from_maps = slow
from rib_ext import pipeline
sys.exit(pipeline.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    return finish_run(tmp_path_factory, "lifetime", "train_cam,make_cam,eval_seed")


def _crf(out: Path, wait_s: float, **kw) -> subprocess.Popen:
    argv = ["--out", str(out), "--stages", "crf", "--cpu_workers", "2"] + TINY
    return subprocess.Popen([sys.executable, "-c", SLOW_CRF, str(wait_s)] + argv, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _masks(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted((out / "crf" / "cam" / "masks").glob("*.png"))}


def _figures(out: Path) -> dict:
    result = json.loads((out / "crf" / "cam" / "result.json").read_text())
    return {k: v for k, v in result.items() if k not in ("seconds", "written")}


@pytest.mark.slow
def test_kill_9_during_crf_leaves_no_worker_and_the_rerun_is_not_refused(seeded, tmp_path):
    out = copy_run(seeded, tmp_path)
    run = _crf(out, 120)
    try:
        assert _wait_for(lambda: len(_children(run.pid)) >= 2, 120), "the CRF pool never started"
        workers = _children(run.pid)
        run.kill()
        run.communicate()
        assert _wait_for(lambda: not any(_alive(w) for w in workers), 5), \
            f"workers {[w for w in workers if _alive(w)]} outlived the run"
    finally:
        run.kill()
        for w in _children(run.pid):
            os.kill(w, signal.SIGKILL)
    rerun = _crf(out, 0)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err


@pytest.mark.slow
def test_sigterm_mid_stage_stops_like_ctrl_c_and_the_rerun_resumes(seeded, tmp_path):
    clean = copy_run(seeded, tmp_path / "clean")
    assert _crf(clean, 0).communicate(timeout=300) is not None
    out = copy_run(seeded, tmp_path / "stopped")
    run = _crf(out, 3)
    assert _wait_for(lambda: len(_children(run.pid)) >= 2, 120), "the CRF pool never started"
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    # Stopped mid-stage: the images in hand were finished (whole files), the report not written.
    assert not (out / "crf" / "cam" / "result.json").exists()
    rerun = _crf(out, 0)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert _masks(out) == _masks(clean) and _masks(out)
    assert _figures(out) == _figures(clean)
