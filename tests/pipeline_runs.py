"""What the pipeline-level tests share: the command line run quietly, the tiny demo's arguments, a
finished run made once per module and copied per test."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from rib_ext import pipeline

# The tests' one tiny setting list: 8 training and 3 held-out images of 64 px, one epoch, two RIB
# steps, one scale: enough to make every file once. A module that needs more adds flags after it.
TINY = ["--demo-images", "8", "--demo-val-images", "3", "--demo-size", "64", "--epochs", "1",
        "--rib-steps", "2", "--num-others", "2", "--thresholds", "0.2", "0.4", "0.1",
        "--scales", "1.0", "--irn-epochs", "1"]


def main(argv) -> int:
    """``python -m rib_ext.pipeline argv`` in this process, its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline.main(argv)


def finish_run(tmp_path_factory, name: str, stages: str, extra=(), start: Path | None = None) -> Path:
    """A run of `stages` on the tiny demo, for a module-scoped fixture; from a copy of the run
    folder ``start`` when given (its finished stages are not made again)."""
    out = tmp_path_factory.mktemp(name) / "run"
    if start is not None:
        shutil.copytree(start, out)
    assert main(["--out", str(out), "--stages", stages] + TINY + list(extra)) == 0
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    """A test's own copy of a finished run (the tests edit or break it)."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out
