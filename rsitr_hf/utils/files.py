"""Files of rsitr_hf: where its caches live, and writing so that a crash never leaves half a file (write
beside the target, then rename over it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from .errors import OutputError, first_line


def cache_root() -> Path:
    """Root of rsitr_hf's caches (images, POS tags, reference data): ``$RSITR_CACHE``, else
    ``~/.cache/rsitr_hf``."""
    return Path(os.environ.get("RSITR_CACHE", Path.home() / ".cache" / "rsitr_hf"))


def temporary_name(path: Path) -> Path:
    """A hidden, unique name beside ``path`` (same folder, so that a rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8): a reader sees the old file or the new one; when the
    write fails (disk full, read-only, no permission) the partial file is removed and an
    :class:`~rsitr_hf.utils.errors.OutputError` names ``path``."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write it ({error.strerror or first_line(error)})") from None


def write_json(path: str | Path, data, indent: int | None = 2) -> None:
    """:func:`write_text` of ``data`` as JSON."""
    write_text(path, json.dumps(data, indent=indent))


def install_folder(staged: Path, target: Path) -> None:
    """Put the complete folder ``staged`` in the place of ``target`` (two renames; the previous ``target``
    is deleted last, so a crash leaves one whole copy, under ``target`` or beside it as ``.<name>.old``)."""
    previous = target.with_name(f".{target.name}.old")
    if previous.exists():
        shutil.rmtree(previous)
    if target.exists():
        os.replace(target, previous)
    os.replace(staged, target)
    if previous.exists():
        shutil.rmtree(previous)
