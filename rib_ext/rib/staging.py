"""Data prepared for the device off the step's path: host arrays through pinned staging buffers,
work queued on a side stream, and the hand-over to the stream that uses it.

On CUDA a preparation (copies from host memory, resizing, normalising) runs on its own stream,
usually from the engine's prefetch thread, so it overlaps the step the default stream is running.
It ends by recording an event; whoever takes the result makes its own stream wait for that event
(never for more: a later preparation queued on the side stream is not waited for) and marks the
tensors as used on that stream (``record_stream``), so that the caching allocator does not hand
their memory to the side stream again while the consumer still reads them. On the CPU everything
runs inline, as before.

Every preparation runs inside :data:`DEVICE_WORK`, which a CUDA graph capture holds exclusively:
a capture waits for the preparations under way to end and keeps new ones waiting until it is
done, so that no thread of ours allocates, pins or copies while a stream is capturing.
"""
from __future__ import annotations

import contextlib
import threading
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


class DeviceWorkGate:
    """Device work of the worker threads (any number at once) against a CUDA graph capture (alone).

    ``with gate.work():`` around a thread's device work; ``with gate.exclusive():`` around a
    capture: it waits until no other thread is inside ``work()``, and holds new work back until it
    ends. The thread holding it exclusively may still enter ``work()`` itself (no deadlock)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._working: dict[int, int] = {}  # thread id -> depth of work() it is in
        self._owner: int | None = None  # the thread holding the gate exclusively
        self._depth = 0

    def busy_threads(self) -> int:
        """How many threads other than the caller are inside ``work()`` now."""
        me = threading.get_ident()
        with self._cond:
            return sum(1 for t, n in self._working.items() if n and t != me)

    @contextlib.contextmanager
    def work(self):
        me = threading.get_ident()
        with self._cond:
            while self._owner is not None and self._owner != me:
                self._cond.wait()
            self._working[me] = self._working.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._working[me] -= 1
                if not self._working[me]:
                    del self._working[me]
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        me = threading.get_ident()
        with self._cond:
            while self._owner is not None and self._owner != me:
                self._cond.wait()
            self._owner = me  # from here on, new work by other threads waits
            self._depth += 1
            while any(n and t != me for t, n in self._working.items()):
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                self._cond.notify_all()


# The one gate of the process: captures and the preparations of every engine's worker threads.
DEVICE_WORK = DeviceWorkGate()


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
        with DEVICE_WORK.work():  # never while a graph is being captured
            if self.stream is None:
                return Staged(fn(*args))
            with torch.cuda.stream(self.stream):
                value = fn(*args)
                event = torch.cuda.Event()
                event.record(self.stream)
            return Staged(value, event, self.device)
