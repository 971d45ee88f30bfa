"""Atomic file writes: a crash never leaves a half-written output under its final name.

Every stage writes through these helpers, so a rerun can trust that an existing output is complete.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np


class UnreadableFileError(ValueError):
    """An existing output or input file is empty, truncated or not in the expected format.

    The message names the file; a stage that meets one while deciding what to skip rebuilds it
    (see :func:`file_is_complete`).
    """


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere: set and restore (a brief window in which another thread's files get 0o022).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The temporary name keeps only this much of the final one: ".<name>.<random>.tmp" must stay within
# the file systems' 255 bytes for any final name that fits (an image id of 250 characters).
TEMP_NAME_KEEP = 64


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:TEMP_NAME_KEEP]}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The final file gets the mode a plain ``open(path, "w")`` would give (0o666 less the umask):
    ``mkstemp`` creates 0o600 files, which teammates on shared storage cannot read.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """System errors of a write name the output meant (a full disk raises from inside ``np.save``
    with no file name, or with the temporary one), so the user's message can say which file."""
    try:
        yield
    except OSError as err:
        if err.filename is None or Path(str(err.filename)).name.startswith(_temp_prefix(path)):
            err.filename, err.filename2 = str(path), None
        raise


def save_npy(path: str | os.PathLike, obj: Any) -> None:
    """``np.save`` atomically (objects such as IRN's map dicts are pickled, as IRN reads them)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, obj, allow_pickle=True)


def load_npy_dict(path: str | os.PathLike) -> dict:
    """Load a dict saved by :func:`save_npy` (IRN's ``.npy`` map format).

    Raises :class:`UnreadableFileError` naming ``path`` for an empty, truncated or foreign file, and
    ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        obj = np.load(path, allow_pickle=True)
        record = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == () else None
    except Exception as err:  # EOFError, pickle.UnpicklingError, ValueError, OSError... by damage
        raise UnreadableFileError(f"{path}: cannot read the .npy file (empty or truncated?): "
                                  f"{type(err).__name__}: {err}") from err
    if not isinstance(record, dict):
        raise UnreadableFileError(f"{path}: expected np.save of a dict, found "
                                  f"{type(record).__name__ if record is not None else 'an array'}")
    return record


def file_is_complete(path: str | Path) -> bool:
    """Whether an existing output file is whole, by a cheap check of its format (no full load):
    .npy header and length (or, for IRN's pickled map dicts, pickle's final STOP opcode), a PNG's
    signature and IEND chunk, a .pth zip's central directory, a .json that parses. Outputs are
    written atomically, so a broken one comes from elsewhere (a copy, a full disk, an older tool)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _npy_is_complete(path, size)
        if suffix == ".png":
            with open(path, "rb") as f:
                head = f.read(8)
                f.seek(max(size - 12, 0))
                tail = f.read(12)
            return head == b"\x89PNG\r\n\x1a\n" and tail[4:8] == b"IEND"
        if suffix in (".pth", ".pt"):
            return zipfile.is_zipfile(path)
        if suffix == ".json":
            json.loads(path.read_text())
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def _npy_is_complete(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            header_len = int.from_bytes(f.read(4), "little")
            header = ast.literal_eval(f.read(header_len).decode("utf8"))
            shape, dtype = header["shape"], np.dtype(header["descr"])
        else:
            shape, _, dtype = reader(f)
        data_start = f.tell()
        if dtype.hasobject:  # a pickle: complete when it ends with the STOP opcode
            f.seek(size - 1)
            return size > data_start and f.read(1) == b"."
    return size == data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# sha256 of files already read in this process, by (path, size, mtime): a run describes its
# datasets several times (one per stage record) and must not reread 10k annotation files each time.
_DIGESTS: dict = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def file_digest(path: str | os.PathLike) -> str:
    """:func:`file_sha256`, cached for the process by path, size and modification time."""
    key = _stat_key(Path(path))
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def remember_digest(path: str | os.PathLike, sha256: str, key: tuple | None = None) -> None:
    """Record a digest computed elsewhere from the file's bytes (``key``: its stat key then)."""
    _DIGESTS[key or _stat_key(Path(path))] = sha256


def save_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(path: str | os.PathLike, fig, **savefig_kw) -> Path:
    """Save a matplotlib figure as PNG atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", **savefig_kw)
    return path


def save_png(path: str | os.PathLike, image) -> None:
    """Save a PIL image atomically (format inferred from the final name, not the temp name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            image.save(f, format="PNG")


def preview(items: Sequence[str], limit: int = 5) -> str:
    """``"a, b, c, ... (N in all)"``: enough names to find the problem without flooding the log."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
