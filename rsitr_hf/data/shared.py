"""Where the project's shared reference data lives: the published split files (``rsitr_splits/``) and UD
English-EWT (``ud_english_ewt/``), in ``../shared`` beside the checkout (as in CI) or in
``$RSITR_SHARED_DIR``."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    return Path(os.environ.get("RSITR_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
