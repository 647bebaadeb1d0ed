"""matplotlib's ``pyplot`` on the Agg backend: rsitr_hf draws to PNG files and never opens a window, and
writes each one atomically."""

from pathlib import Path

import matplotlib

from .files import atomic_output

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(figure, path: str | Path, **options) -> Path:
    """``figure.savefig`` to ``path`` atomically (:func:`~rsitr_hf.utils.files.atomic_output`: the old file or
    the new one, an error naming ``path``), in the format its suffix names; ``options`` go to ``savefig``."""
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format=Path(path).suffix.lstrip(".").lower() or "png", **options)
    return Path(path)
