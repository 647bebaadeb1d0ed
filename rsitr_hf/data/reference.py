"""Reference data that ships inside rsitr_hf (gzip-compressed in ``rsitr_hf/data/reference/``):

- ``rsitr_splits/``: the published caption and file-name split files of RSICD, RSITMD and UCM-Captions
  (no images), against which ``rsitr-validate`` compares a user's ``<name>_precomp`` folder;
- ``ud_english_ewt/``: the dev and test portions of UD English-EWT (CC BY-SA 4.0, licence beside them), for
  training a small stanza POS tagger offline.

They are unpacked once into ``$RSITR_CACHE/reference`` (default ``~/.cache/rsitr_hf/reference``), where
code that needs file paths reads them. ``$RSITR_SHARED_DIR``, a folder holding ``rsitr_splits/`` and
``ud_english_ewt/`` uncompressed, overrides the packaged copies.
"""

from __future__ import annotations

import gzip
import os
import uuid
from pathlib import Path

from ..utils.files import cache_root

PACKAGED = Path(__file__).parent / "reference"
STANDARD_DATASETS = ("rsicd", "rsitmd", "ucm")


def reference_dir(kind: str) -> Path:
    """The folder of reference data ``kind`` (``rsitr_splits`` or ``ud_english_ewt``), uncompressed."""
    override = os.environ.get("RSITR_SHARED_DIR")
    if override:
        return Path(override) / kind
    target = cache_root() / "reference" / kind
    for packed in sorted(path for path in (PACKAGED / kind).rglob("*") if path.is_file()):
        relative = packed.relative_to(PACKAGED / kind)
        unpacked = target / (relative.with_suffix("") if packed.suffix == ".gz" else relative)
        if unpacked.is_file() and unpacked.stat().st_mtime >= packed.stat().st_mtime:
            continue
        unpacked.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.decompress(packed.read_bytes()) if packed.suffix == ".gz" else packed.read_bytes()
        partial = unpacked.with_name(f".{unpacked.name}.{uuid.uuid4().hex}")
        partial.write_bytes(data)
        os.replace(partial, unpacked)  # atomic: a concurrent reader sees the old file or the whole new one
    return target


def splits_dir() -> Path:
    """``<dir>/<name>_precomp/{train,test}_{caps,filename}.txt`` for ``name`` in ``STANDARD_DATASETS``."""
    return reference_dir("rsitr_splits")


def ud_english_dir() -> Path:
    """``<dir>/en_ewt-ud-{dev,test}.conllu``."""
    return reference_dir("ud_english_ewt")
