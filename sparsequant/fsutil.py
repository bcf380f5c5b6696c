"""Small filesystem helpers: sha256 of files, atomic file writes, clear disk-full errors."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from sparsequant.errors import ArtifactError

_CHUNK = 1 << 22


def resolve_path(path: str | Path, base_dir: Path) -> Path:
    """`path` with ~ expanded; a relative path is taken from `base_dir` (the pipeline file's folder)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def user_cache_dir() -> Path:
    """$SPARSEQUANT_CACHE, else $XDG_CACHE_HOME/sparsequant, else ~/.cache/sparsequant."""
    if os.environ.get("SPARSEQUANT_CACHE"):
        return Path(os.environ["SPARSEQUANT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sparsequant"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the whole new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with disk_errors(path):
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (no extra disk for unchanged weights), copying across filesystems.

    ONNX files are always copied: `onnx.load` refuses external data with more than one hard link
    (its guard against hard-link attacks), so a linked `model.onnx.data` could not be loaded.
    """
    if ".onnx" in src.name:
        shutil.copy2(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# Native writers do not always raise OSError: safetensors' Rust serializer raises SafetensorError
# "I/O error: No space left on device (os error 28)", so a full disk is also recognised by its text.
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


# torch.save's zip writer loses errno altogether ("[enforce fail at inline_container.cc] unexpected
# pos 704 vs 598" when a write came up short), so callers of torch-based writers (DCP) also ask the
# file system, before they delete their partial output, whether it is (nearly) out of space.
_NEARLY_FULL_BYTES = 64 * 2**20


def no_space_left(path: Path) -> bool:
    """True when the file system holding `path` (or its nearest existing parent) has < 64 MiB free."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free < _NEARLY_FULL_BYTES


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(exc) for text in _DISK_FULL_TEXT)


@contextlib.contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """Turn a full disk or a read-only location into an ArtifactError that says how to fix it."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise ArtifactError(
                f"the disk is full while writing {where}. Nothing complete was overwritten; free "
                "space (or choose another --output-dir) and re-run: finished stages are kept."
            ) from exc
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ArtifactError(
                f"cannot write {where}: {exc.strerror}. Choose a writable --output-dir."
            ) from exc
        raise
