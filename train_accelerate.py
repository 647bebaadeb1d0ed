"""Train an rsitr_hf adapter: ``accelerate launch train_accelerate.py --config hub_configs/<recipe>.yaml``.

The loop lives in :mod:`rsitr_hf.train` (so the installed package and the offline demo run the same
code); see that module or ``--help`` for the options.
"""

import sys

from rsitr_hf.train import main

if __name__ == "__main__":
    sys.exit(main())
