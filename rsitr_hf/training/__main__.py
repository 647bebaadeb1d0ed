"""``python -m rsitr_hf.training`` (and ``accelerate launch -m rsitr_hf.training``): ``rsitr-train``."""

import sys

from rsitr_hf.training.cli import main

sys.exit(main())
