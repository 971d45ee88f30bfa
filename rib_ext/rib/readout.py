"""What the host reads of each RIB group step: the per-image figures (exploded, stop statistic,
loss), and what it makes of them (the records, the stop reasons, the snapshots).

On CUDA the engine reads a step one step late, so that the device never waits for the host; the
stops are then also decided on the device, as masks. The figures' layout and the host's reading
of them sit here, apart from the engine's scheduling of the steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from rib_ext.config import RIBConfig
from rib_ext.rib.stops import STOP_EXPLOSION, STOP_MARGIN, STOP_STEPS
from rib_ext.sgd import poly_factor
from rib_ext.training import NonFiniteLossError


@dataclass
class Readout:
    """One group step's per-image figures on their way to the host, read one step late on CUDA.

    ``values`` [n, 3] float64 per image of ``states``: exploded (0/1), stop statistic, loss.
    ``exploded``: images the host already knows exploded in that step (early reads only)."""

    states: list
    values: Optional[torch.Tensor]
    exploded: list
    snapshots: list  # per image of ``states``: its per-scale maps after the target pass, or None
    event: Optional[object] = None  # CUDA event after the copy to pinned memory

    def to_pinned(self) -> None:
        """The figures to pinned memory behind the step's work (CUDA): the host waits for this
        copy only, when it reads them a step later."""
        host = torch.empty(self.values.shape, dtype=self.values.dtype, pin_memory=True)
        host.copy_(self.values, non_blocking=True)
        self.values = host
        self.event = torch.cuda.Event()
        self.event.record()

    def rows(self) -> list:
        if self.values is None:
            return []
        if self.event is not None:
            self.event.synchronize()  # this step's copy only: later steps stay queued
        return self.values.tolist()


def step_figures(states: list, exploded: list, stats: list, losses: list, updates: list,
                 cfg: RIBConfig) -> torch.Tensor:
    """The step's [n, 3] float64 figures of ``states`` (exploded, stop statistic, loss); on late
    reads (``exploded`` holds device flags) also each image's device stop decision: margin,
    explosion, non-finite (its ``adapting`` mask goes False; ``updates``: the step's masks)."""
    stat = torch.stack(stats).double()
    loss = torch.stack([x.double() for x in losses])
    if exploded[0] is None:
        flags = torch.zeros_like(stat)
    else:
        flags = torch.stack(exploded).double()
        stop = ~(torch.isfinite(stat) & torch.isfinite(loss))
        if cfg.stop_on_margin:
            stop |= stat > cfg.margin  # float64, as the host compares it
        for i, st in enumerate(states):
            st.adapting = updates[i] & ~stop[i]
    return torch.stack([flags, stat, loss], dim=1)


def read_step(readout: Readout, cfg: RIBConfig) -> None:
    """The host's read of one step: the records, stop reasons and snapshots of the images it
    finds still adapting (a row of an image seen stopped in an earlier step is left unread);
    raises :class:`NonFiniteLossError` as the step did, before any image is finished."""
    for st in readout.exploded:
        st.stop = STOP_EXPLOSION
    rows = [(st, r, snap) for st, r, snap in zip(readout.states, readout.rows(), readout.snapshots)
            if st.stop is None]
    for st, (exploded, _, _), _ in rows:
        if exploded:
            st.stop = STOP_EXPLOSION
    updated = [(st, stat, loss, snap) for st, (exploded, stat, loss), snap in rows if not exploded]
    if not all(math.isfinite(stat) and math.isfinite(loss) for _, stat, loss, _ in updated):
        _raise_non_finite(updated, cfg)
    for st, stat, _, snap in updated:
        if snap is not None:
            st.snapshots.append(snap if isinstance(snap, dict) else st.maps(snap))
        st.step += 1
        st.stats.append(stat)
        if cfg.stop_on_margin and stat > cfg.margin:
            st.stop = STOP_MARGIN
        elif st.step >= cfg.steps:
            st.stop = STOP_STEPS


def _raise_non_finite(updated: list, cfg: RIBConfig) -> None:
    bad = [f"{st.target.name} (loss {loss:.4g}, target logit sum {stat:.4g})"
           for st, stat, loss, _ in updated if not (math.isfinite(stat) and math.isfinite(loss))]
    step = updated[0][0].step + 1
    lr = cfg.lr * poly_factor(updated[0][0].step, cfg.steps, cfg.lr_power)
    raise NonFiniteLossError(f"rib: step {step} of image {', '.join(bad)} is not finite with "
                             f"learning rate {lr:g}: the adaptation diverged; lower the RIB "
                             f"learning rate (no map is written for it)")
