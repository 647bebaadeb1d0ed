"""Train an adapter on an RSITR benchmark with Accelerate (``rsitr-train``, ``train_accelerate.py``).

    accelerate launch train_accelerate.py --config hub_configs/<recipe>.yaml [--section.field value ...]
        [--resume_from_checkpoint latest|DIR] [--push_to_hub --hub_model_id user/name]

Every recipe field is an option (listed below with its default); a value given here wins over the file.
The run validates at step 0 and after each epoch (or every ``training.eval_every_steps``), keeps the best
adapter by validation mR, evaluates it once on test, and writes ``adapter/``, ``metrics.json``, plots and
resumable checkpoints to ``output_dir``. Mixed precision and compilation: a value set in the recipe wins;
left unset, ``accelerate launch``'s flags or its config file decide.
"""

from __future__ import annotations

import sys

from ..utils.cli import command, command_parser, parse_arguments, report_error
from .hub import HubPushError
from .loop import train
from .recipe import RecipeError, add_recipe_arguments, load_recipe, recipe_overrides


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        __doc__, usage="%(prog)s [--config RECIPE] [--section.field VALUE ...] [--resume_from_checkpoint DIR]"
    )
    parser.add_argument("--config", help="YAML recipe (see hub_configs/); without one, the defaults below")
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    recipe_options = add_recipe_arguments(parser)
    args = parse_arguments(parser, argv)
    try:
        recipe = load_recipe(args.config, recipe_overrides(args, recipe_options))
        if recipe.hub.push_to_hub and not recipe.hub.model_id:
            raise RecipeError("--push_to_hub needs --hub_model_id user/name")
        train(recipe, args.resume_from_checkpoint)
    except HubPushError as error:
        return report_error(error, status=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
