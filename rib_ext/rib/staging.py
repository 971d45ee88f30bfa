"""Data prepared for the device off the step's path: host arrays through pinned staging buffers,
work queued on a side stream, and the hand-over to the stream that uses it.

On CUDA a preparation (copies from host memory, resizing, normalising) runs on its own stream,
usually from the engine's prefetch thread, so it overlaps the step the default stream is running.
It ends by recording an event; whoever takes the result makes its own stream wait for that event
(never for more: a later preparation queued on the side stream is not waited for) and marks the
tensors as used on that stream (``record_stream``), so that the caching allocator does not hand
their memory to the side stream again while the consumer still reads them. On the CPU everything
runs inline, as before.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A copy of host ``array`` on ``device``. For CUDA through pinned memory with a non-blocking
    copy on the current stream: the host does not wait, and the pinned block is not reused before
    the copy is done (torch's pinned allocator records the copy's stream)."""
    host = torch.from_numpy(np.array(array, copy=True, order="C"))
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _tensors(value: Any):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class Staged:
    """The result of a preparation; :meth:`take` it on the stream that will use it."""

    def __init__(self, value: Any, event: "torch.cuda.Event | None" = None,
                 device: torch.device | None = None):
        self.value, self.event, self.device = value, event, device

    def take(self) -> Any:
        if self.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(self.event)
            for t in _tensors(self.value):
                if t.device.type == "cuda":
                    t.record_stream(stream)
            self.event = None  # taken: a second take needs no second wait
        return self.value


class SideStream:
    """Runs preparations for ``device`` on a stream of their own (CUDA), or inline (CPU).

    Create it after the device-side constants its preparations read: the side stream starts
    behind everything queued so far on the creating thread's stream.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.stream = None
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def run(self, fn: Callable[..., Any], *args) -> Staged:
        if self.stream is None:
            return Staged(fn(*args))
        with torch.cuda.stream(self.stream):
            value = fn(*args)
            event = torch.cuda.Event()
            event.record(self.stream)
        return Staged(value, event, self.device)
