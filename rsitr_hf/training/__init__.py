"""Training: the recipe, the Accelerate loop (:func:`train`), its checkpoints and outputs, and the Hub push.

``accelerate launch train_accelerate.py --config hub_configs/<recipe>.yaml`` (or ``rsitr-train``, or
``python -m rsitr_hf.training``) runs :func:`rsitr_hf.training.cli.main`, which loads the recipe and calls
:func:`train`. The loop itself is :mod:`rsitr_hf.training.loop`, one phase per screen.
"""

from .checkpoints import TrainerState
from .cli import main
from .data import load_datasets, resolve_num_workers
from .hub import HubPushError, model_card, push_adapter
from .loop import TrainResult, train
from .recipe import Recipe, RecipeError, load_recipe, save_recipe
from .setup import parameter_counts

__all__ = [
    "HubPushError",
    "Recipe",
    "RecipeError",
    "TrainResult",
    "TrainerState",
    "load_datasets",
    "load_recipe",
    "main",
    "model_card",
    "parameter_counts",
    "push_adapter",
    "resolve_num_workers",
    "save_recipe",
    "train",
]
