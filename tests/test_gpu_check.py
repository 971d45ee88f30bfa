"""benchmarks/gpu_check.sh, the one GPU call, cut short: OUT must still hold a summary naming
every finished step and the tarball of their logs (its dry run, on the CPU)."""
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from factories import gpu_check_steps

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _steps() -> list[tuple[str, int]]:
    return gpu_check_steps()


def _dry_run(out: Path, scale: str):
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_LIMIT_SCALE": scale,
           "PYTHON": sys.executable}
    return subprocess.Popen(["bash", str(SCRIPT), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finished(summary: str) -> list[str]:
    """The steps the summary reports as finished (a start line followed by its rc line)."""
    return re.findall(r"^== (\S+) \(limit [0-9.]+ s\).*\n   rc=", summary, re.M)


def test_the_step_limits_fit_the_call():
    steps = _steps()
    assert sum(limit for _, limit in steps) <= 420
    names = [n for n, _ in steps]
    # the figures that matter first: VOC size, then G=8 vs G=1, then the settings, then the tests
    assert names.index("rib_voc") < names.index("rib_groups_small") < names.index(
        "rib_settings_small") < names.index("cuda_tests")
    assert "TORCH_CUDA_ARCH_LIST" not in SCRIPT.read_text()


@pytest.mark.slow
def test_a_dry_run_whose_steps_are_killed_leaves_a_summary_of_every_step(tmp_path):
    out = tmp_path / "out"
    proc = _dry_run(out, "0.005")  # every limit well under the time torch takes to import
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, log
    assert sorted(os.listdir(out)) == ["gpu_check.tar.gz", "summary.txt"], log
    summary = (out / "summary.txt").read_text()
    names = [n for n, _ in _steps()]
    assert _finished(summary) == names, summary
    assert summary.count("(time limit reached)") >= len(names) - 1, summary
    assert f"step limits {sum(lim for _, lim in _steps())} s" in summary
    assert re.search(rf"^status 1; {len(names)} of {len(names)} steps finished", summary, re.M)
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        members = {Path(m).name for m in tar.getnames()}
    assert {f"{n}.log" for n in names} <= members and "summary.txt" in members


@pytest.mark.slow
def test_a_dry_run_stopped_by_term_keeps_the_steps_it_finished(tmp_path):
    out = tmp_path / "out"
    proc = _dry_run(out, "10")
    try:
        deadline = time.time() + 240
        # OUT's summary is rewritten after every step: wait for the first, then stop the call
        while time.time() < deadline:
            summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
            if _finished(summary):
                break
            time.sleep(0.2)
        assert _finished(summary) == ["env"], summary
        assert (out / "gpu_check.tar.gz").exists()
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1, log
    assert _finished(summary)[0] == "env"
    assert re.search(r"^   interrupted \(TERM\) during \S+", summary, re.M), summary
    assert re.search(r"^status 1; \d+ of \d+ steps finished; .*; TERM$", summary, re.M), summary
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        assert "env.log" in {Path(m).name for m in tar.getnames()}
