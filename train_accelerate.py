"""Train an rsitr_hf adapter: ``accelerate launch train_accelerate.py --config hub_configs/<recipe>.yaml``.

The loop lives in :mod:`rsitr_hf.training.loop` (so the installed package and the offline demo run the same
code); ``--help`` lists the options.
"""

import sys

from rsitr_hf.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
