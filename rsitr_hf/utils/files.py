"""Files of rsitr_hf: where its caches live, writing so that a crash never leaves half a file (write beside
the target, then rename over it), and a cheap fingerprint that tells whether a file changed."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError, first_line

FINGERPRINT_SPAN = 1 << 16  # the bytes hashed at each end of a file for its fingerprint


def cache_root() -> Path:
    """Root of rsitr_hf's caches (images, POS tags, reference data): ``$RSITR_CACHE``, else
    ``~/.cache/rsitr_hf``."""
    return Path(os.environ.get("RSITR_CACHE", Path.home() / ".cache" / "rsitr_hf"))


def temporary_name(path: Path) -> Path:
    """A hidden, unique name beside ``path`` (same folder, so that a rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A hidden path beside ``path`` to write an output to, renamed over ``path`` when the block ends: a
    reader sees the old file or the new one. When the block fails the partial file is removed, and an
    ``OSError`` (disk full, read-only, no permission) becomes an :class:`~rsitr_hf.utils.errors.OutputError`
    naming ``path``."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"{path}: cannot write it ({error.strerror or first_line(error)})") from None
        raise


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8; :func:`atomic_output`)."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


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


@dataclass(frozen=True)
class FileFingerprint:
    """A cheap sign that a file is the one seen before: its size on disk, its modification time (ns) and
    the SHA-256 of its first and last ``FINGERPRINT_SPAN`` bytes (where a GeoTIFF keeps its header and its
    directories). Reading it costs a ``stat`` and at most 128 KiB, whatever the file's size."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> FileFingerprint:
        with open(path, "rb") as file:
            status = os.fstat(file.fileno())
            return cls(status.st_size, status.st_mtime_ns, ends_sha256(file, status.st_size))

    def change(self, path: str | Path) -> str | None:
        """How the file at ``path`` differs from the one this fingerprint was taken of, in a few words
        (``None``: it does not): gone, another size, another modification time, or other bytes at its
        ends."""
        try:
            with open(path, "rb") as file:
                status = os.fstat(file.fileno())
                if status.st_size != self.size:
                    return f"{status.st_size:,} bytes, {self.size:,} when indexed"
                if status.st_mtime_ns != self.mtime_ns:
                    return (
                        f"modified {local_time(status.st_mtime_ns)}, {local_time(self.mtime_ns)} when indexed"
                    )
                if ends_sha256(file, status.st_size) != self.sha256:
                    return "other bytes than when indexed, with the same size and time"
        except FileNotFoundError:
            return "the file is gone"
        except OSError as error:
            return f"cannot be read ({error.strerror or first_line(error)})"
        return None


def ends_sha256(file, size: int) -> str:
    """SHA-256 of the first and last ``FINGERPRINT_SPAN`` bytes of the open binary ``file`` of ``size``."""
    digest = hashlib.sha256(file.read(FINGERPRINT_SPAN))
    if size > FINGERPRINT_SPAN:
        file.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
        digest.update(file.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


def local_time(nanoseconds: int) -> str:
    """``2026-12-07 20:24:04``: a modification time as this machine's local time."""
    return datetime.datetime.fromtimestamp(nanoseconds / 1e9).strftime("%Y-%m-%d %H:%M:%S")
