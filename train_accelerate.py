"""Training entry point: ``accelerate launch train_accelerate.py --config hub_configs/<recipe>.yaml``.

Coming: the Accelerate training loop lands with the training issue (#4). Until then the offline main
job is ``rsitr-demo`` (synthetic data + zero-shot evaluation of a tiny local CLIP).
"""

import sys

if __name__ == "__main__":
    print("train_accelerate.py is coming with the training issue; run `rsitr-demo` for now.", file=sys.stderr)
    sys.exit(2)
