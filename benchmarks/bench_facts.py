"""What every benchmark row names, and how the benchmarks hand their rows on as they measure them.

Each row carries :func:`run_facts`: the device (type and name), the backend of rib_ext's operators
(``compiled`` or ``fallback``, the pure-PyTorch references; per operator when they differ), the
torch version and the CUDA version torch was built with. A script prints each row as one line
(``row <what>: ...``) the moment it is measured and rewrites its JSON file (temporary name, then
rename) after each, so that a run cut short keeps every row it measured.
"""
from __future__ import annotations

import atexit
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rib_ext import ops  # noqa: E402
from rib_ext.io import save_text  # noqa: E402


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def backend(device) -> str | dict:
    """``compiled`` or ``fallback`` for ``device``'s operators; a dict per operator when mixed."""
    kind = torch.device(device).type
    per_op = {op: "compiled" if by_device[kind].startswith("compiled") else "fallback"
              for op, by_device in ops.backends()["ops"].items()}
    kinds = set(per_op.values())
    return kinds.pop() if len(kinds) == 1 else per_op


def run_facts(device) -> dict:
    device = torch.device(device)
    return {"device": device.type, "device_name": device_name(device), "backend": backend(device),
            "torch": torch.__version__, "cuda": torch.version.cuda}


def print_row(what: str, text: str) -> None:
    """One measured row, printed at once (the log keeps it if the run is cut short)."""
    print(f"row {what}: {text}", flush=True)


def write_json(path, doc: dict) -> None:
    """``doc`` to ``path`` atomically (nothing when ``path`` is None)."""
    if path:
        save_text(path, json.dumps(doc, indent=1))


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder, removed when the benchmark's process exits (an error included; a
    killed process leaves it): the data and maps a benchmark writes are not its result."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, True)
    return root


def main(argv=None) -> int:
    """``python benchmarks/bench_facts.py [--require-compiled] DEVICE``: the facts as JSON; with
    ``--require-compiled`` exit 1 unless every operator runs compiled on DEVICE."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("device")
    p.add_argument("--require-compiled", action="store_true")
    args = p.parse_args(argv)
    facts = run_facts(args.device)
    print(json.dumps({**facts, "ops": ops.backends()}, indent=1))
    if args.require_compiled and facts["backend"] != "compiled":
        print(f"error: not every operator runs compiled on {args.device}: {facts['backend']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
