"""The one loop over images that every per-image stage shares.

A per-image stage is a declaration (:class:`PerImageStage`): its name, its outputs as path patterns
(``masks/{id}.png``, relative to the stage's folder) with the writer of each, and either a function
that computes one image (``compute(context, id) -> ImageResult``) or, for work that batches images itself
(RIB's engine, a DataLoader), a driver that hands each finished image to ``emit``. :func:`run_stage`
owns the rest, the same for every stage:

- the shard of the images this rank does (under torchrun; every image alone);
- the images already done, skipped: all of an image's outputs exist and are whole (a damaged file
  is made again, named in a warning), so a rerun resumes;
- the work in this process, or in a pool of worker processes (:mod:`rib_ext.workers`);
- the writes, each atomic (temporary name, then rename), in the declared order: the last output
  written is the one whose presence makes the image done;
- progress, and the integer sums over ranks of what each image adds (counts, confusion matrices),
  which are the whole list's in any order and for any number of ranks and workers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from rib_ext import distributed
from rib_ext.outputs import split_complete
from rib_ext.runtime import progress
from rib_ext.workers import run_tasks


@dataclass(frozen=True)
class Output:
    """One file per image: ``pattern`` holds ``{id}`` (and any other field given to
    :func:`run_stage`), relative to the stage's folder (an absolute pattern stays as it is);
    ``write(path, value)`` writes it atomically (a ``rib_ext.io`` or ``rib_ext.data`` ``save_*``)."""

    pattern: str
    write: Callable[[Path, Any], Any]


@dataclass
class ImageResult:
    """What one image gives: the value of each output (by the output's key; an output left out
    is not written) and what it adds to each of the stage's sums."""

    files: Dict[str, Any] = field(default_factory=dict)
    sums: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PerImageStage:
    """A per-image stage. ``outputs`` in the order they are written; ``sums``: name -> shape of
    the integer arrays the images add up (declared, so a rank with no image still takes part in
    the sums). ``compute(context, id)`` makes one image's :class:`ImageResult`; ``reuse(context, id,
    paths)``, when given, is called for an image already done and returns what it adds to the sums
    (read back from its files), so the sums cover every image of the list, not only this run's.
    ``drive(context, ids, emit)`` instead of ``compute``: the stage runs the images itself (in
    batches, a DataLoader) and calls ``emit(id, image)`` for each one finished. Functions given
    to a worker pool must be module-level (picklable) where processes are spawned."""

    name: str
    outputs: Mapping[str, Output]
    compute: Optional[Callable[[Any, str], ImageResult]] = None
    reuse: Optional[Callable[[Any, str, Dict[str, Path]], ImageResult]] = None
    drive: Optional[Callable[[Any, List[str], Callable[[str, ImageResult], None]], None]] = None
    sums: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if (self.compute is None) == (self.drive is None):
            raise ValueError(f"stage {self.name}: give compute or drive, one of them")


@dataclass
class StageResult:
    """``written`` and ``skipped`` (images already done) and ``sums``: over every rank;
    ``todo``: this rank's images computed here; ``seconds``: this rank's time."""

    written: int
    skipped: int
    sums: Dict[str, np.ndarray]
    todo: List[str]
    done: List[str]
    seconds: float

    def count(self, name: str) -> int:
        return int(self.sums[name])


def output_paths(stage: PerImageStage, folder: Path, image_id: str, fields: Mapping[str, str]) -> Dict[str, Path]:
    """The files of one image: each output's pattern with its fields filled in."""
    values = {**fields, "id": image_id}
    paths = {}
    for key, out in stage.outputs.items():
        text = out.pattern
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        paths[key] = Path(folder) / text
    return paths


@dataclass(frozen=True)
class _Job:
    """What a worker needs for one image (inherited by forked workers)."""

    stage: PerImageStage
    context: Any
    folder: Path
    fields: Mapping[str, str]
    done: frozenset


def _write(job: _Job, image_id: str, image: ImageResult) -> int:
    """Write an image's files in the declared order; 1 if any was written."""
    paths = output_paths(job.stage, job.folder, image_id, job.fields)
    unknown = set(image.files) - set(paths)
    if unknown:
        raise KeyError(f"stage {job.stage.name}: image {image_id} gave undeclared outputs {sorted(unknown)}")
    for key, out in job.stage.outputs.items():
        if key in image.files:
            out.write(paths[key], image.files[key])
    return 1


def _one(job: _Job, image_id: str) -> Tuple[Dict[str, Any], int]:
    """(sums, 1 if written here else 0) of one image: a worker's task, or this process's."""
    if image_id in job.done:
        image = job.stage.reuse(job.context, image_id,
                                output_paths(job.stage, job.folder, image_id, job.fields))
        return image.sums, 0
    image = job.stage.compute(job.context, image_id)
    _write(job, image_id, image)
    return image.sums, 1


class _Sums:
    def __init__(self, shapes: Mapping[str, Tuple[int, ...]]):
        self.values = {k: np.zeros(tuple(s), dtype=np.int64) for k, s in shapes.items()}

    def add(self, sums: Mapping[str, Any]) -> None:
        for key, value in sums.items():
            if key not in self.values:
                raise KeyError(f"an image added to the undeclared sum {key!r}")
            self.values[key] += np.asarray(value, dtype=np.int64)


def run_stage(stage: PerImageStage, context: Any, ids: Sequence[str], folder: str | Path,
              fields: Optional[Mapping[str, str]] = None, workers: int = 1, shard: bool = True,
              label: Optional[str] = None) -> StageResult:
    """Run ``stage`` over ``ids`` (the whole list: each rank takes its shard, unless ``shard`` is
    False because the caller gives this rank's share). ``workers`` > 1: a pool of that many
    processes computes the images (``compute`` stages only). Returns the counts and sums over every
    rank (a collective: every rank calls it, with the same list)."""
    folder = Path(folder)
    fields = dict(fields or {})
    mine = distributed.shard(list(ids)) if shard else list(ids)
    # Sharded before the done ones are dropped, so the shards stay disjoint whatever the other
    # ranks have written already.
    paths = {(n, key): p for n in mine
             for key, p in output_paths(stage, folder, n, fields).items()}
    for parent in {p.parent for p in output_paths(stage, folder, "_", fields).values()}:
        parent.mkdir(parents=True, exist_ok=True)
    incomplete = {n for n, _ in split_complete(paths, stage.name)[1]}
    done = [n for n in mine if n not in incomplete] if stage.outputs else []
    todo = [n for n in mine if n in incomplete] if stage.outputs else list(mine)
    job = _Job(stage, context, folder, fields, frozenset(done))
    sums = _Sums(stage.sums)
    written = 0
    t0 = time.time()
    items = mine if stage.reuse is not None else todo
    bar = progress(None, label or stage.name, total=len(items))
    if stage.drive is not None:
        reused = [n for n in items if n in job.done]
        for image_id in reused:
            sums.add(_one(job, image_id)[0])
            bar.update(1)

        def emit(image_id: str, image: ImageResult) -> None:
            nonlocal written
            written += _write(job, image_id, image)
            sums.add(image.sums)
            bar.update(1)

        if todo:
            stage.drive(context, todo, emit)
    else:
        for _, (image_sums, was_written) in run_tasks(_one, job, items, workers):
            sums.add(image_sums)
            written += was_written
            bar.update(1)
    bar.close()
    seconds = time.time() - t0
    # Wait for the other ranks without a deadline (their shards may take longer), then sum.
    distributed.barrier(f"{label or stage.name}: the other ranks' images")
    # Integer counts: summed over ranks they are the whole list's, in any order.
    names = list(sums.values)
    flat = np.concatenate([np.array([written, len(done)], dtype=np.int64)]
                          + [sums.values[k].reshape(-1) for k in names])
    flat = distributed.all_reduce_sum(flat)
    total_written, total_skipped = int(flat[0]), int(flat[1])
    reduced, at = {}, 2
    for k in names:
        size = sums.values[k].size
        reduced[k] = flat[at:at + size].reshape(sums.values[k].shape)
        at += size
    return StageResult(total_written, total_skipped, reduced, todo, done, round(seconds, 2))


def on_main_rank(write: Callable[[], Any]) -> None:
    """``write()`` on rank 0 only (a report over every rank's images), then every rank waits for
    it: the next stage may read what it wrote."""
    if distributed.rank() == 0:
        write()
    distributed.barrier()


def main_rank() -> bool:
    return distributed.rank() == 0


def rank_label(name: str) -> str:
    """A progress label naming the rank under torchrun."""
    return f"{name} (rank {distributed.rank()})" if distributed.is_distributed() else name
