"""Provenance: what each stage folder was made from, so a rerun never mixes or trusts stale outputs.

``<stage>/provenance.json`` holds the settings that shape the stage's outputs and the fingerprints
of its inputs: the dataset lists it reads (the demo's generator settings, or root + list + a hash
of the ids), the fingerprints of the upstream stages (so a change anywhere upstream reaches every
stage after it), and a given ``--cam-checkpoint``'s sha256. Before any stage runs, the records of
the stages to run and of everything upstream of them are compared with the present settings; a
difference stops the run with the fields named, unless ``--overwrite``, which empties those stage
folders and everything downstream and runs them again.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path
from typing import Dict, List

from rib_ext.io import file_sha256
from rib_ext.stages.context import PipelineError, RunContext

RECORD = "provenance.json"


class ProvenanceError(PipelineError):
    """Outputs on disk were made with other settings or inputs than the run asks for."""


def stage_module(name: str):
    return importlib.import_module(f"rib_ext.stages.{name}")


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class Provenance:
    """Records of every registered stage for one run's settings, computed on demand."""

    def __init__(self, ctx: RunContext, registry: List[str]):
        self.ctx, self.registry = ctx, list(registry)
        self._records: Dict[str, dict] = {}
        self._inputs: Dict[str, object] = {}

    # ------------------------------------------------------------------------------ records
    def input_value(self, dep: str):
        """A dependency's fingerprint: a dataset's description, or an upstream stage's digest."""
        if dep not in self._inputs:
            if dep.startswith("data:"):
                value = self.ctx.dataset_description(dep[5:])
            elif dep == "train_cam" and self.ctx.cfg.cam_checkpoint:
                path = Path(self.ctx.cfg.cam_checkpoint)
                if not path.is_file():
                    raise PipelineError(f"--cam-checkpoint {path}: file not found")
                value = in_run_folder({"cam_checkpoint": str(path.resolve()),
                                       "sha256": file_sha256(path)}, self.ctx.out)
            else:
                value = self.record(dep)["fingerprint"]
            self._inputs[dep] = value
        return self._inputs[dep]

    def record(self, stage: str) -> dict:
        if stage not in self._records:
            mod = stage_module(stage)
            settings = in_run_folder(json.loads(json.dumps(mod.settings(self.ctx.cfg))), self.ctx.out)
            body = {"stage": stage, "settings": settings,
                    "inputs": {dep: self.input_value(dep) for dep in mod.UPSTREAM
                               if dep.startswith("data:") or dep in self.registry}}
            self._records[stage] = {**body, "fingerprint": digest(body)}
        return self._records[stage]

    # ---------------------------------------------------------------------------- structure
    def upstream(self, stage: str) -> set:
        """Every stage ``stage`` reads from, directly or not."""
        seen: set = set()
        todo = [stage]
        while todo:
            for dep in stage_module(todo.pop()).UPSTREAM:
                if dep in self.registry and dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def downstream(self, stage: str) -> List[str]:
        return [s for s in self.registry if stage in self.upstream(s)]

    def uses_checkpoint(self, stage: str) -> bool:
        return stage == "train_cam" and bool(self.ctx.cfg.cam_checkpoint)

    # ----------------------------------------------------------------------------- checking
    def saved(self, stage: str):
        path = self.ctx.stage_dir(stage, RECORD)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return {}  # unreadable: differs from anything, so it is reported

    def plan(self, stages: List[str]) -> List[str]:
        """Check the records of ``stages`` and of what they read; returns the stages to run, in
        pipeline order (with --overwrite, those whose records differ and what follows them)."""
        chain = set(stages)
        for s in stages:
            chain |= self.upstream(s)
        differing: Dict[str, List[str]] = {}
        for stage in self.registry:
            if stage not in chain or self.uses_checkpoint(stage):
                continue
            saved = self.saved(stage)
            if saved is None:
                if self.ctx.stage_dir(stage).is_dir():
                    self.ctx.warn(f"{self.ctx.stage_dir(stage)} has no {RECORD} (made by an older "
                                  f"version?): its settings cannot be checked")
                continue
            diff = differences(saved, self.record(stage))
            if diff:
                differing[stage] = diff
        if not differing:
            return [s for s in self.registry if s in stages]
        first = next(s for s in self.registry if s in differing)
        if not self.ctx.overwrite:
            lines = [f"{self.ctx.stage_dir(s)} was made with other settings or inputs than this "
                     f"run's ({'; '.join(d)})" for s, d in differing.items()]
            after = [s for s in self.downstream(first) if self.ctx.stage_dir(s).exists()]
            redo = ", ".join([first] + after)
            raise ProvenanceError("\n  ".join(lines) + f"\nRerun with the settings it was made "
                                  f"with, use another --out, or pass --overwrite to recompute "
                                  f"{redo}.")
        redo = set(differing)
        for s in differing:
            redo |= {d for d in self.downstream(s) if self.ctx.stage_dir(d).exists()}
        # Under torchrun every rank reads the records and plans before rank 0 removes anything:
        # a rank that looked after the removal would find no record and plan other stages.
        self.ctx.barrier("--overwrite: every rank's plan, before the removal")
        if self.ctx.is_main:
            for s in self.registry:
                if s in redo and self.ctx.stage_dir(s).exists():
                    self.ctx.warn(f"--overwrite: removing {self.ctx.stage_dir(s)} (made with other "
                                  f"settings) to compute it again")
                    shutil.rmtree(self.ctx.stage_dir(s))
        self.ctx.barrier()
        return [s for s in self.registry if s in redo or s in stages]

    def write(self, stage: str) -> None:
        """Tag the stage folder before the stage writes into it (so a partial folder is tagged)."""
        self.ctx.write_json(self.ctx.stage_dir(stage, RECORD), self.record(stage))


RUN_FOLDER = "<out>"


def in_run_folder(obj, out: Path):
    """``obj`` with every path inside the run folder written relative to it (``<out>/train_cam/
    cam_net.pth``): a copied or moved run folder then keeps its records valid (IRN's weights on the
    demo are the run's own classifier, named by an absolute path in the settings)."""
    if isinstance(obj, dict):
        return {k: in_run_folder(v, out) for k, v in obj.items()}
    if isinstance(obj, list):
        return [in_run_folder(v, out) for v in obj]
    if isinstance(obj, str) and "/" in obj:
        try:
            return f"{RUN_FOLDER}/{Path(obj).resolve().relative_to(Path(out).resolve()).as_posix()}"
        except (ValueError, OSError):
            return obj
    return obj


def differences(saved: dict, now: dict) -> List[str]:
    """'settings.lr 0.0001 -> 0.5'-style lines for every field that differs."""
    out: List[str] = []

    def walk(prefix: str, a, b) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(f"{prefix}.{k}" if prefix else k, a.get(k, "<absent>"), b.get(k, "<absent>"))
        elif a != b:
            if prefix.startswith("inputs.") and isinstance(a, str) and isinstance(b, str) \
                    and prefix.count(".") == 1:
                out.append(f"{prefix}: the {prefix[7:]} outputs it was made from have changed")
            elif prefix.endswith(".annotations_sha256"):
                out.append(f"{prefix}: the dataset's annotations (labels or masks) have changed "
                           f"since")
            else:
                out.append(f"{prefix} {json.dumps(a)} -> {json.dumps(b)}")

    walk("", {k: saved.get(k) for k in ("settings", "inputs")},
         {k: now.get(k) for k in ("settings", "inputs")})
    return out
