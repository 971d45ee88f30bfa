"""Provenance: what each stage folder was made from, so a rerun never mixes or trusts stale outputs.

``<stage>/provenance.json`` is the one record of "was this made with other settings?". It holds

* ``settings``: the settings that shape the stage's outputs;
* ``inputs``: the fingerprints of what every part of the stage reads: the dataset lists (their
  images and image-level labels, ``data:<list>``; their ground-truth masks, ``truth:<list>``, only
  for the stages that read them, so an edited mask reaches the evaluations, not the maps), the
  upstream stages that are not split by map set (the classifier; a given ``--cam-checkpoint``'s
  sha256);
* ``sets``: for a stage that keeps each map set apart (``crf/cam``, ``crf/rib``), per map set the
  fingerprints of the upstream parts of that set and the values the stage derived from another
  stage's result (crf's threshold, eval_seed's best one; ir_label's conf_fg / conf_bg from it).

Before any stage runs, the records of the stages to run and of everything upstream of them are
compared with the present settings; again before each stage runs, with the values derived from
the results just made. A difference in a part that holds outputs (a whole stage, or one map set
of it) stops the run with the fields named, unless ``--overwrite`` and the stage is among those
to run: then that part, and what the stages after it made of the same map set, is removed and
made again. ``--stages`` is what runs: a stale stage that is not named is never recomputed
silently.

Older records (no ``format``) still load: their settings are compared, and the stage's next run
writes the record in this format. The domain functions ir_label, make_sem_seg and the saliency
step still keep a ``settings.json`` in their folder for callers outside a run (a notebook, the
benchmarks); in a run it never decides anything: every field it holds is in this record too (the
thresholds, derived or set; the IRN network's sha256), so a difference stops the run here first,
and ``--overwrite`` removes the folder with it. Other records answer other questions and stay:
a trainer's resume state holds its training settings (a partial training resumed by the domain
function, in or outside a run, must be the same training); the data readers' stamps (the demo's
``demo_stamp.json``, VOC's ``cls_labels.npy.source.json``, COCO's mask cache record) say whether a
cache inside the dataset folder is still that of its sources, not what a run's outputs were made
from; the segment stage's prediction folder records the network's sha256 its PNGs came from.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rib_ext.io import file_sha256, save_json
from rib_ext.layout import MAP_SETS, PER_SET, RECORD_FILE
from rib_ext.stages.context import PipelineError, RunContext

RECORD = RECORD_FILE
FORMAT = 2
WHOLE = "*"  # a part of a stage: the whole stage, or one map set's outputs of it


class ProvenanceError(PipelineError):
    """Outputs on disk were made with other settings or inputs than the run asks for."""


def stage_module(name: str):
    return importlib.import_module(f"rib_ext.stages.{name}")


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def reads(stage: str) -> Tuple[str, ...]:
    """What a stage's record fingerprints: its ``UPSTREAM`` but the stages whose results (not
    their outputs) it derives values from (``RESULTS_FROM``: recorded as the values, see
    :meth:`Provenance.derived`)."""
    mod = stage_module(stage)
    return tuple(d for d in mod.UPSTREAM if d not in getattr(mod, "RESULTS_FROM", ()))


def maker_of(stage: str) -> Optional[str]:
    """The map set ``stage`` makes (make_cam: cam, rib: rib), else None."""
    return next((name for name, (s, _) in MAP_SETS.items() if s == stage), None)


class Provenance:
    """Records of every registered stage for one run's settings, computed on demand."""

    def __init__(self, ctx: RunContext, registry: List[str]):
        self.ctx, self.registry = ctx, list(registry)
        self._records: Dict[str, dict] = {}
        self._inputs: Dict[str, object] = {}

    # ------------------------------------------------------------------------------ records
    def input_value(self, dep: str):
        """A dataset's description or a set-less upstream stage's fingerprint."""
        if dep.startswith(("data:", "truth:")):
            if dep not in self._inputs:
                kind, which = dep.split(":")
                self._inputs[dep] = self.ctx.dataset_description(which, truth=kind == "truth")
            return self._inputs[dep]
        if dep == "train_cam" and self.ctx.cfg.cam_checkpoint:
            if dep not in self._inputs:
                path = Path(self.ctx.cfg.cam_checkpoint)
                if not path.is_file():
                    raise PipelineError(f"--cam-checkpoint {path}: file not found")
                self._inputs[dep] = in_run_folder({"cam_checkpoint": str(path.resolve()),
                                                   "sha256": file_sha256(path)}, self.ctx.out)
            return self._inputs[dep]
        return self.record(dep)["fingerprint"]

    def set_input(self, dep: str, name: str):
        """Map set ``name``'s part of an upstream stage: its fingerprint for that set; None when
        the stage makes another map set."""
        made = maker_of(dep)
        if made is not None:
            return self.record(dep)["fingerprint"] if made == name else None
        return self.record(dep)["set_fingerprints"][name]

    def derived(self, stage: str, name: str) -> dict:
        """What ``stage`` derives from another stage's result for map set ``name`` (None where
        that result is not there yet)."""
        fn = getattr(stage_module(stage), "derived", None)
        return json.loads(json.dumps(fn(self.ctx, self.ctx.cfg, name))) if fn is not None else {}

    def record(self, stage: str) -> dict:
        if stage not in self._records:
            mod = stage_module(stage)
            settings = in_run_folder(json.loads(json.dumps(mod.settings(self.ctx.cfg))), self.ctx.out)
            deps = [d for d in reads(stage) if d.startswith(("data:", "truth:")) or d in self.registry]
            per_set = stage in PER_SET
            common = {d: self.input_value(d) for d in deps
                      if not per_set or d.startswith(("data:", "truth:"))
                      or (maker_of(d) is None and d not in PER_SET)}
            body = {"stage": stage, "format": FORMAT, "settings": settings, "inputs": common}
            sets: Dict[str, dict] = {}
            if per_set:
                for name in MAP_SETS:
                    ins = {d: self.set_input(d, name) for d in deps if d not in common}
                    sets[name] = {"inputs": {d: v for d, v in ins.items() if v is not None},
                                  "derived": self.derived(stage, name)}
                body["sets"] = sets
            base = {k: body[k] for k in ("stage", "settings", "inputs")}
            self._records[stage] = {**body, "fingerprint": digest(body),
                                    "set_fingerprints": {n: digest({**base, "set": n, **s})
                                                         for n, s in sets.items()}}
        return self._records[stage]

    def refresh(self) -> None:
        """Forget the stage records (a stage has run: what the next ones derive may have changed)."""
        self._records.clear()

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

    def made_from(self, stage: str) -> List[str]:
        """The stages whose records hold ``stage``'s fingerprint, directly or not (not those
        that only derive values from its result: they are checked against the values)."""
        out, todo = [], [stage]
        while todo:
            s = todo.pop()
            for d in self.registry:
                if s in reads(d) and d not in out:
                    out.append(d)
                    todo.append(d)
        return [s for s in self.registry if s in out]

    def uses_checkpoint(self, stage: str) -> bool:
        return stage == "train_cam" and bool(self.ctx.cfg.cam_checkpoint)

    # ----------------------------------------------------------------------------- checking
    def saved(self, stage: str):
        path = self.ctx.layout.record(stage)
        if not path.is_file():
            return None
        try:
            return _current_names(json.loads(path.read_text()))
        except ValueError:
            return {}  # unreadable: differs from anything, so it is reported

    def folders(self, stage: str, part: str) -> List[Path]:
        if part == WHOLE:
            return [self.ctx.stage_dir(stage)]
        return self.ctx.layout.set_dirs(stage, part)

    def has_outputs(self, stage: str, part: str) -> bool:
        for folder in self.folders(stage, part):
            if folder.is_dir() and any(p.name != RECORD for p in folder.iterdir()):
                return True
        return False

    def stale(self, stage: str, with_derived: bool) -> Dict[str, List[str]]:
        """The parts of ``stage`` on disk (WHOLE, or a map set) made with other settings or
        inputs than this run's, with the differing fields; only parts that hold outputs."""
        saved = self.saved(stage)
        if saved is None:
            if self.ctx.stage_dir(stage).is_dir() and self.has_outputs(stage, WHOLE):
                self.ctx.warn(f"{self.ctx.stage_dir(stage)} has no {RECORD} (made by an older "
                              f"version?): its settings cannot be checked")
            return {}
        now = self.record(stage)
        if saved and "format" not in saved:
            # A record of an older version: its fields were laid out otherwise (one dataset
            # fingerprint, upstream fingerprints not split by map set), so only its settings are
            # compared; the stage's next run writes the record in this format.
            diff = differences({"settings": saved.get("settings")}, {"settings": now["settings"]})
            return {WHOLE: diff} if diff and self.has_outputs(stage, WHOLE) else {}
        out: Dict[str, List[str]] = {}
        diff = differences({k: saved.get(k) for k in ("settings", "inputs")},
                           {k: now.get(k) for k in ("settings", "inputs")})
        if diff:
            return {WHOLE: diff} if self.has_outputs(stage, WHOLE) else {}
        for name, part in now.get("sets", {}).items():
            old = (saved.get("sets") or {}).get(name) or {}
            a, b = {"inputs": old.get("inputs")}, {"inputs": part["inputs"]}
            if with_derived:
                a["derived"], b["derived"] = old.get("derived"), part["derived"]
            diff = differences(a, b, prefix=f"sets.{name}")
            if diff and self.has_outputs(stage, name):
                out[name] = diff
        return out

    def descendants(self, stage: str, part: str) -> List[Tuple[str, str]]:
        """The (stage, part) pairs made from ``stage``'s ``part``: of the same map set where the
        part is one (a map-making stage's whole output is its map set)."""
        name = maker_of(stage) if part == WHOLE else part
        found = []
        for d in self.made_from(stage):
            if d in PER_SET:
                found += [(d, n) for n in MAP_SETS if name is None or n == name]
            elif maker_of(d) is None or name is None:
                found.append((d, WHOLE))
        return found

    def remove(self, parts: List[Tuple[str, str]], why: str) -> None:
        """Remove the parts' folders (rank 0; every rank waits), in pipeline order."""
        # Under torchrun every rank reads the records and plans before rank 0 removes anything:
        # a rank that looked after the removal would find no record and plan otherwise.
        self.ctx.barrier("--overwrite: every rank's plan, before the removal")
        if self.ctx.is_main:
            removed = []
            for stage, part in sorted(set(parts), key=lambda p: (self.registry.index(p[0]), p[1])):
                for folder in self.folders(stage, part):
                    if folder.exists():
                        self.ctx.warn(f"--overwrite: removing {folder} ({why}) to compute it again")
                        shutil.rmtree(folder)
                        removed.append((stage, part))
            self.forget_figures(removed)
        self.ctx.barrier()

    def forget_figures(self, parts: List[Tuple[str, str]]) -> None:
        """Drop the removed parts' figures from summary.json (the report is made from it): a
        figure stays only while the outputs it was computed from do."""
        path = self.ctx.layout.summary
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(summary, dict):
            return
        changed = False
        for stage, part in parts:
            if part == WHOLE and stage in summary:
                del summary[stage]
                changed = True
            elif isinstance(summary.get(stage), dict) and part in summary[stage]:
                del summary[stage][part]
                changed = True
        if changed:
            save_json(path, summary)

    def _refuse(self, differing: Dict[str, Dict[str, List[str]]], redo: List[str],
                extra: Optional[str] = None) -> None:
        lines = []
        for stage, parts in differing.items():
            for part, diff in parts.items():
                where = self.ctx.stage_dir(stage) if part == WHOLE else self.folders(stage, part)[0]
                lines.append(f"{where} was made with other settings or inputs than this run's "
                             f"({'; '.join(diff)})")
        raise ProvenanceError("\n  ".join(lines) + (extra or f"\nRerun with the settings it was "
                              f"made with, use another --out, or pass --overwrite to recompute "
                              f"{', '.join(redo)}."))

    def _affected(self, differing: Dict[str, Dict[str, List[str]]]) -> List[Tuple[str, str]]:
        parts = [(s, p) for s, ps in differing.items() for p in ps]
        for s, p in list(parts):
            parts += [(d, q) for d, q in self.descendants(s, p) if self.has_outputs(d, q)]
        return parts

    def plan(self, stages: List[str]) -> List[str]:
        """Check the records of ``stages`` and of what they read; returns the stages to run, in
        pipeline order: ``stages``. With --overwrite the named stages' parts whose records differ,
        and what the stages after them made of the same map sets, are removed first."""
        chain = set(stages)
        for s in stages:
            chain |= self.upstream(s)
        # What a stage derives from a stage of this run is known only once that one has run:
        # checked then (begin).
        differing: Dict[str, Dict[str, List[str]]] = {}
        for stage in self.registry:
            if stage not in chain or self.uses_checkpoint(stage):
                continue
            ahead = self.upstream(stage) & set(stages)
            parts = self.stale(stage, with_derived=not ahead)
            if parts:
                differing[stage] = parts
        ordered = [s for s in self.registry if s in stages]
        if not differing:
            return ordered
        unnamed = {s: p for s, p in differing.items() if s not in stages}
        if unnamed and self.ctx.overwrite:
            self._refuse(unnamed, [], extra=f"\n--stages is what runs, and {', '.join(unnamed)} "
                         f"is not among them: add it to --stages (with --overwrite) to recompute "
                         f"it, or rerun with the settings it was made with.")
        if not self.ctx.overwrite:
            redo = [s for s in self.registry if s in differing]
            also = [s for s in redo if s not in stages]
            self._refuse(differing, redo, extra=None if not also else (
                f"\nRerun with the settings it was made with, use another --out, or pass "
                f"--overwrite with {', '.join(also)} among --stages (--stages is what runs) to "
                f"recompute {', '.join(redo)}."))
        self.remove(self._affected(differing), "made with other settings")
        return ordered

    def begin(self, stage: str) -> None:
        """Before ``stage`` runs: check its record again with the values it derives from the
        results made so far (this run's included), then tag the folder with it (so a partial
        folder is tagged). A part made from other derived values stops the run, or with
        --overwrite is removed with what was made from it."""
        # Every rank reads the results the stages before this one wrote (rank 0 may still be
        # writing them), and decides the same.
        self.ctx.barrier(f"{stage}: the results of the stages before it")
        self.refresh()
        if not self.uses_checkpoint(stage):
            parts = self.stale(stage, with_derived=True)
            if parts:
                if not self.ctx.overwrite:
                    self._refuse({stage: parts}, [stage])
                self.remove(self._affected({stage: parts}), "made from another upstream result")
        self.write(stage)

    def write(self, stage: str) -> None:
        """Tag the stage folder with its record."""
        self.ctx.write_json(self.ctx.layout.record(stage), self.record(stage))


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


def differences(saved: dict, now: dict, prefix: str = "") -> List[str]:
    """'settings.lr 0.0001 -> 0.5'-style lines for every field that differs."""
    out: List[str] = []

    def walk(prefix: str, a, b) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(f"{prefix}.{k}" if prefix else k, a.get(k, "<absent>"), b.get(k, "<absent>"))
        elif a != b:
            dep = prefix.split("inputs.", 1)[1] if "inputs." in prefix else ""
            if dep and "." not in dep and isinstance(a, str) and isinstance(b, str):
                out.append(f"{prefix}: the {dep} outputs it was made from have changed")
            elif prefix.endswith((".labels_sha256", ".annotations_sha256")):
                out.append(f"{prefix}: the dataset's image-level labels have changed since")
            elif prefix.endswith(".masks_sha256"):
                out.append(f"{prefix}: the dataset's ground-truth masks have changed since")
            elif ".derived." in prefix:
                out.append(f"{prefix} {json.dumps(a)} -> {json.dumps(b)} (derived from "
                           f"another stage's result)")
            else:
                out.append(f"{prefix} {json.dumps(a)} -> {json.dumps(b)}")

    walk(prefix, saved, now)
    return out


def _current_names(obj):
    """A record with the settings' earlier names replaced by today's (RIB's ``gndrp_mode`` is
    ``gndrp_behaviour``): a folder made before a rename is not taken for one of other settings."""
    from rib_ext.config import RIBConfig

    if isinstance(obj, dict):
        return {RIBConfig.OLD_NAMES.get(k, k): _current_names(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_current_names(v) for v in obj]
    return obj
