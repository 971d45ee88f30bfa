"""Reading and writing the package's own torch files (models and training states), in one place.

Every file is ``torch.save`` of a dict with a ``format`` name and a ``version``; reading checks
both and loads with ``weights_only=True`` (tensors and plain Python values only), so a foreign or
damaged file is refused with a message naming it instead of failing somewhere later.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from rib_ext.io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint or training state is unreadable, of another kind or version, or was written with
    other settings. The message names the file and what to do about it."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (the message says which stage writes it)."""


def write_checkpoint(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """``torch.save(record)`` atomically (a killed write never leaves a partial file under ``path``).

    Written through a Python file, so a full disk raises the system's OSError (ENOSPC, which the
    pipeline turns into its message naming ``path``) rather than the zip writer's RuntimeError."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(dict(record), f)
        except RuntimeError as err:  # the zip writer's own failure: say what the disk says
            if _free_bytes(tmp.parent) < (1 << 20):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            raise


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def read_checkpoint(path: str | os.PathLike, format: Optional[str], version: Optional[int] = None,
                    what: str = "checkpoint", hint: str = "",
                    map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """The dict saved in ``path``, checked to be a ``format`` file of ``version``.

    ``what`` names the kind of file in messages (``"rib_ext IRN checkpoint"``); ``hint`` is appended
    to them (``" (train_irn writes it)"``, ``"; delete it to start over"``). ``format=None`` accepts
    any dict (third-party files). Raises :class:`MissingCheckpointError` or :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"{what} not found: {path}{hint}")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for damaged files (zip, pickle, EOF)
        raise CheckpointError(f"{path}: not a readable {what} (truncated, corrupt or not a torch.save "
                              f"file?): {_load_failure(err)}{hint}") from err
    if not isinstance(record, Mapping):
        raise CheckpointError(f"{path}: not a {what}: expected a state dict or a record (a dict), found "
                              f"a {type(record).__name__}{hint}")
    if format is not None and record.get("format") != format:
        found = f"format {record['format']!r}" if "format" in record else "no format field"
        raise CheckpointError(f"{path}: not a {what} ({found}, expected {format!r}){hint}")
    if version is not None and record.get("version") != version:
        raise CheckpointError(f"{path}: {what} version {record.get('version')!r} is not supported "
                              f"(expected {version}){hint}")
    return dict(record)


def _load_failure(err: Exception) -> str:
    """What torch.load said, without its advice to torch's own users (re-running with
    weights_only=False, filing an issue with PyTorch): the file is the problem here."""
    text = str(err)
    if "weights_only" in text or "WeightsUnpickler" in text:
        detail = [ln.strip() for ln in text.splitlines() if ln.strip() and not any(
            w in ln for w in ("weights_only", "Weights only", "file an issue", "documentation",
                              "trusted source", "WeightsUnpickler"))]
        return "not a file of tensors" + (f" ({detail[0]})" if detail else "")
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _names(names: Optional[Sequence[str]]) -> str:
    if not names:
        return ""
    shown = ", ".join(list(names)[:5])
    return f": {shown}{', ...' if len(names) > 5 else ''}"


def check_num_classes(path: str | os.PathLike, found: int, expected: int, dataset: str,
                      found_names: Optional[Sequence[str]] = None,
                      expected_names: Optional[Sequence[str]] = None) -> None:
    """Raise :class:`CheckpointError` when a loaded network's class count is not the dataset's.

    A classifier of 20 classes on a 5-class dataset loads and runs (its first 5 channels are
    taken), so nothing downstream would fail: the maps would silently be the wrong classes'.
    """
    if int(found) == int(expected):
        return
    raise CheckpointError(f"{path}: a network of {found} classes{_names(found_names)}, but {dataset} "
                          f"has {expected}{_names(expected_names)}; pass a checkpoint trained on "
                          f"this dataset's classes (or run train_cam)")
