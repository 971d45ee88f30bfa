"""One target image's adaptation state in the RIB engine, and the :class:`Result` it ends as.

The engine schedules many of these at once; the state is what a step reads and writes for one
image, and what the host's reads of the steps (:mod:`rib_ext.rib.readout`) fill in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from rib_ext import ops
from rib_ext.rib.sampling import OtherDraws
from rib_ext.rib.targets import Target


@dataclass
class ImageState:
    """One image being adapted: its inputs, its weight copy, its maps, and how far it has got.

    Two counters: ``queued`` steps the host has queued on the device, ``step`` updates the host
    has read back (behind ``queued`` by the reads not made yet, one step on CUDA). The one mask
    kept per image, ``adapting``, is the device's view of whether it still adapts."""

    target: Target
    keys: torch.Tensor  # int64 [K']: the classes of its label
    label: torch.Tensor
    x2: list  # per scale: stage-2 features [2, C, h, w] of (image, flip)
    params: list  # its weight copy, in the head's parameter order
    bufs: list  # their momentum buffers (None until the first update)
    acc: list  # per scale: accumulated map [K, h, w]
    rng: np.random.Generator
    others: Optional[OtherDraws] = None  # this image's other images, one permutation of its pool
    step: int = 0  # updates made, as the host has read them
    stop: Optional[str] = None  # why it stopped, once the host has read it (stops.py)
    queued: int = 0  # steps queued on the device (ahead of ``step`` by the reads not yet made)
    # 0-d bool on the device: no stop decided there yet. A step queued before the host has read
    # that the image stopped leaves its maps and weights as they are (late reads only; None
    # otherwise, the host then knowing every stop before it queues the next step).
    adapting: Optional[torch.Tensor] = None
    stats: list = field(default_factory=list)  # the stop statistic of each step read
    snapshots: list = field(default_factory=list)  # maps after each step (snapshot_steps only)
    t0: float = field(default_factory=time.time)
    slot: Optional[int] = None  # its row of the engine's weight slots (cuda_graphs)
    target_graph: Optional[Callable] = None  # its passes, graphed (cuda_graph_targets)
    graph_cams: Optional[tuple] = None  # this step's CAMs per scale from that graph

    def maps(self, acc: Optional[list] = None) -> dict:
        """IRN's map dict of the accumulated maps (or of ``acc``, a snapshot of them)."""
        return ops.finalize_maps(self.acc if acc is None else acc, self.target.image.shape[:2],
                                 self.keys.cpu().numpy())


@dataclass
class Result:
    """One adapted image: IRN's map dict and the record of how adaptation went."""

    name: str
    maps: dict
    record: dict
    step_maps: list = field(default_factory=list)  # maps of steps 0..k, when snapshots are asked for


def result_of(st: ImageState) -> Result:
    """The finished image's maps and record."""
    maps = st.maps()
    record = {"name": st.target.name, "index": st.target.index, "steps": st.step,
              "stop": st.stop, "target_logit_sums": [round(v, 4) for v in st.stats],
              "final_target_logit_sum": round(st.stats[-1], 4) if st.stats else None,
              "seconds": round(time.time() - st.t0, 3)}
    return Result(st.target.name, maps, record, st.snapshots)
