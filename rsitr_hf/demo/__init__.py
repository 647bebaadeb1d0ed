"""The offline demo (``rsitr-demo``): a synthetic source and target domain, a small CLIP pretrained on the
source (built from a config with a word-level tokenizer), an MRS-Adapter trained on the target through the
same training loop as the real recipes, and the check that keeps the README's table equal to what it
prints. The tests use the same small CLIPs and synthetic data where real checkpoints and datasets would need
the network."""

from .run import main, run_demo
from .synthetic import vocabulary, write_seed_layout
from .task import prepare_demo_task
from .tiny_clip import save_tiny_clip

__all__ = ["main", "prepare_demo_task", "run_demo", "save_tiny_clip", "vocabulary", "write_seed_layout"]
