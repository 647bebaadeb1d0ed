"""matplotlib's ``pyplot`` on the Agg backend: rsitr_hf draws to PNG files and never opens a window."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
