"""``python -m rsitr_hf.search``, and ``accelerate launch -m rsitr_hf.search index ...``: ``rsitr-search``."""

import sys

from rsitr_hf.search.cli import main

sys.exit(main())
