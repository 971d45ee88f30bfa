"""How many images a RIB group adapts at once when ``group_size`` is 0 (automatic).

On CUDA: the most images whose step fits the device's free memory, from one measured step at the
largest target's size, plus what CUDA graphs keep per image; on the CPU one image (the
convolutions already use every core, and a group only adds memory). Apart from the engine because
it is arithmetic on a few measured figures, testable with faked ones.
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from rib_ext.rib.targets import Target

log = logging.getLogger("rib_ext.rib")

GROUP_MEMORY_SLACK = 0.1  # the part of the free device memory the automatic G leaves alone


def choose_group_size(per_image_bytes: float, budget_bytes: float, max_group: int = 16) -> int:
    """The largest G (1..max_group) whose step, at ``per_image_bytes`` each, fits the budget."""
    if per_image_bytes <= 0:
        return max_group
    return int(max(1, min(max_group, budget_bytes // per_image_bytes)))


def automatic_group_size(device: torch.device, largest: Optional[tuple],
                         probe_step_bytes: Callable[[tuple], int], weights: Sequence[torch.Tensor],
                         graphs: bool, graph_targets: bool,
                         group_memory_gb: float) -> tuple[int, dict]:
    """G, and how it was chosen: on CUDA the largest G whose step fits the device's free memory
    (less a tenth for the allocator's slack; capped by ``group_memory_gb`` when positive), from
    one step measured by ``probe_step_bytes`` at the size of the largest target, ``largest``
    (H, W); on the CPU 1.

    The measured step is eager. With ``graphs`` (``cuda_graphs``) each image also costs (an
    estimate, on the safe side): its rows of the weight slots (``weights``, momentum and
    gradients, float32), and the graph's private memory pool, which keeps the captured pass's
    activations apart from the eager ones (counted as one more step of the image); with
    ``graph_targets`` its own target graph's pool as well (one more step again)."""
    if device.type != "cuda" or largest is None:
        return 1, {"group_size": 1, "why": f"{device.type}: no gain from groups"}
    step = probe_step_bytes(largest)
    graph_pools = slot_bytes = 0
    if graphs:
        graph_pools = step * (2 if graph_targets else 1)
        slot_bytes = 3 * sum(p.numel() for p in weights) * 4
    per_image = step + graph_pools + slot_bytes
    free = torch.cuda.mem_get_info(device)[0]
    budget = free * (1 - GROUP_MEMORY_SLACK)
    if group_memory_gb:
        budget = min(budget, group_memory_gb * 2**30)
    g = choose_group_size(per_image, budget)
    return g, {"group_size": g, "step_bytes_per_image": int(step),
               "graph_pool_bytes_per_image": int(graph_pools),
               "slot_bytes_per_image": int(slot_bytes),
               "free_bytes": int(free), "budget_bytes": int(budget),
               "largest_target": [int(largest[0]), int(largest[1])]}


def measure_step_bytes(device: torch.device, size: tuple, num_classes: int,
                       run_step: Callable[[Target], None]) -> int:
    """Device memory one image's step takes at target size ``size`` (its weights, maps and the
    step's activations): ``run_step`` adapts a blank image of that size for one step, measured,
    then freed."""
    label = np.zeros(num_classes, np.float32)
    label[0] = 1.0
    probe = Target(0, "(group size probe)", np.zeros((*size, 3), np.uint8), label)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_step(probe)
    torch.cuda.synchronize(device)
    used = torch.cuda.max_memory_allocated(device) - base
    torch.cuda.empty_cache()
    return int(used)


def largest_target_size(targets: Iterable) -> tuple[Optional[tuple], Iterable]:
    """(H, W) of the largest of ``targets`` when it is a list, else of the first target (with a
    warning: an iterator is read once), and the targets, whole, to adapt."""
    if isinstance(targets, (list, tuple)):
        largest = max((t.image.shape[:2] for t in targets), key=lambda hw: hw[0] * hw[1],
                      default=None)
        return largest, targets
    targets = iter(targets)
    first = next(targets, None)
    if first is None:
        return None, targets
    largest = first.image.shape[:2]
    log.warning("RIB group size measured on the first target's size %s: pass "
                "run(largest=) to size G for the largest", largest)
    return largest, itertools.chain([first], targets)
