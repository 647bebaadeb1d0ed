"""``python -m rsitr_hf.demo``: ``rsitr-demo``."""

import sys

from rsitr_hf.demo.run import main

sys.exit(main())
