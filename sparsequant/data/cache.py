"""sparsequant's user cache directory, and a small cache of texts that checks itself on read."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sparsequant.fsutil import user_cache_dir  # noqa: F401  (re-exported: one definition)

logger = logging.getLogger(__name__)


def sha256_text(text: str) -> str:
    """Hex sha256 of the UTF-8 encoding of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a torn one.

    A unique temporary name (not a fixed ``.tmp``) lets two processes fill the cache at once.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a cache is fine to share with other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_texts(directory: Path, names: tuple[str, ...], version: int) -> tuple[dict, dict] | None:
    """Read ``{name}.txt`` files and ``info.json`` written by `write_texts`.

    Args:
        directory: The cache entry.
        names: The texts to read.
        version: The format version the caller expects in ``info["format_version"]``.

    Returns:
        ``(texts, info)``, or None when the entry is missing, incomplete, stale or altered (each
        text's sha256 must match ``info["sha256"]``).
    """
    try:
        info = json.loads((directory / "info.json").read_text(encoding="utf-8"))
        texts = {n: (directory / f"{n}.txt").read_bytes().decode("utf-8") for n in names}
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format_version") != version:
        return None
    if any(sha256_text(texts[n]) != info.get("sha256", {}).get(n) for n in names):
        logger.warning("cache entry %s was altered; rebuilding it", directory)
        return None
    return texts, info


def write_texts(directory: Path, texts: dict[str, str], info: dict[str, Any]) -> None:
    """Write ``{name}.txt`` for each text, then ``info.json``; log (do not raise) on failure.

    ``info.json`` goes last, so an entry without it is incomplete and `read_texts` ignores it. A
    read-only or full cache directory only costs a rebuild next time, so it must not stop a run.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            write_atomic(directory / f"{name}.txt", text.encode("utf-8"))
        write_atomic(directory / "info.json", json.dumps(info, indent=1).encode("utf-8"))
    except OSError as exc:
        logger.warning("could not write the cache entry %s: %s", directory, exc)
