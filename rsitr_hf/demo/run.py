"""The offline demo (``rsitr-demo``, the README's main job): transfer a small CLIP to a new RS domain.

1. Build a small CLIP "pretrained" on a synthetic *source* domain (bright, plain wording) and save it as
   an ordinary model directory (cached: skipped when ``<output-dir>/base`` exists).
2. Generate a synthetic *target* dataset in the seed layout (hazy, colour-shifted, more and smaller
   objects, different wording; cached).
3. Train an MRS-Adapter with HMMC on the target train split, selecting on validation, through the same
   :func:`rsitr_hf.training.train` that ``train_accelerate.py`` runs, with ``hub_configs/demo.yaml``; the
   demo passes its base model and data folder to the recipe itself.
4. Print test recall: zero-shot base vs adapted, and the trainable-parameter share.
5. Reload the saved adapter (with ``PeftModel.from_pretrained``, as every command loads one:
   :class:`rsitr_hf.evaluation.inference.RetrievalModel`) and check its metrics match.
6. Compare the figures with README.md's table (see :mod:`rsitr_hf.demo.readme`).

Needs no network. ``rsitr-demo --prepare_only`` stops after steps 1 and 2, so that
``accelerate launch train_accelerate.py --config hub_configs/demo.yaml`` finds the task.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..data import load_rsitr
from ..evaluation import METRIC_KEYS, metrics_table, score_tests
from ..evaluation.inference import RetrievalModel
from ..training import load_recipe, train
from ..training.recipe import add_recipe_arguments, recipe_overrides
from ..tuners.methods import get_method
from ..utils.cli import command, command_parser, parse_arguments, report_error
from ..utils.files import write_json
from .readme import StaleReadme, check_readme, update_readme
from .task import prepare_demo_task

DEMO_RECIPE = Path("hub_configs/demo.yaml")
README = Path("README.md")  # the demo runs from the repository root


def run_demo(
    output_dir: str | Path = "outputs/demo",
    config: str | Path = DEMO_RECIPE,
    num_source: int = 1500,
    num_target: int = 800,
    num_test: int = 200,
    pretrain_epochs: int = 3,
    seed: int = 0,
    overrides: dict | None = None,
) -> dict[str, dict[str, float]]:
    """Run the demo; returns ``{"zero-shot": metrics, "adapted": metrics, "reloaded": metrics}``.
    ``overrides``: recipe fields to set (``{"training.epochs": 2}``)."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    base, target = prepare_demo_task(output_dir, num_source, num_target, num_test, pretrain_epochs, seed)
    recipe = load_recipe(
        config,
        {
            "base_model": str(base),
            "data.format": "seed",
            "data.path": str(target),
            "output_dir": str(output_dir / "run"),
            "overwrite_output_dir": True,  # the demo reruns from scratch; its base and data are reused
            **(overrides or {}),
        },
    )
    test = {"target": (load_rsitr(target, validation_fraction=recipe.data.validation_fraction)["test"], None)}
    ties = recipe.evaluation.ties
    zero_shot = tested(RetrievalModel(base), test, ties)

    result = train(recipe)

    reloaded = tested(
        RetrievalModel(base, result.output_dir / "adapter"), test, ties
    )  # PeftModel.from_pretrained
    trained, base_parameters = result.cost["trainable_parameters"], result.cost["base_parameters"]
    rows = {"zero-shot": zero_shot, "adapted": result.test_metrics, "reloaded": reloaded}
    images = len(test["target"][0])
    print(f"\ntarget-domain test split: {images} images, {5 * images} captions")
    print(metrics_table(rows))
    print(
        f"{get_method(recipe.method.name).summary}: {trained:,} trained parameters = "
        f"{100 * trained / base_parameters:.2f}% of the base model's {base_parameters:,}"
    )
    mismatch = {
        k: (reloaded[k], result.test_metrics[k])
        for k in METRIC_KEYS
        if abs(reloaded[k] - result.test_metrics[k]) > 1e-6
    }
    if mismatch:
        raise RuntimeError(f"the reloaded adapter's metrics differ from the trained one's: {mismatch}")
    print("reloaded with PeftModel.from_pretrained: metrics match")
    write_json(output_dir / "demo_results.json", rows)
    print(f"done in {time.perf_counter() - started:.0f} s; outputs in {output_dir}")
    return rows


def tested(model: RetrievalModel, test: dict, ties: str) -> dict[str, float]:
    """The test metrics of a loaded model (base, or base + adapter) on the demo's target test split."""
    return score_tests(
        model.model, test, list(test), model.processor, ties, text_inputs=model.text_inputs
    ).metrics


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        __doc__, usage="%(prog)s [--output_dir DIR] [--config RECIPE] [--seed N] [--section.field VALUE ...]"
    )
    parser.add_argument("--output_dir", default="outputs/demo", help="where the demo writes its outputs")
    parser.add_argument("--config", default=str(DEMO_RECIPE), help="the demo's training recipe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the pretraining")
    parser.add_argument(
        "--update_readme", action="store_true", help="write this run's figures into README.md's demo table"
    )
    parser.add_argument(
        "--prepare_only",
        action="store_true",
        help="prepare the task (base model and data in --output_dir) and stop, for train_accelerate.py",
    )
    recipe_options = add_recipe_arguments(
        parser, exclude=("base_model", "output_dir", "data.format", "data.path")
    )
    args = parse_arguments(parser, argv)
    if args.prepare_only:
        base, target = prepare_demo_task(args.output_dir, seed=args.seed)
        print(f"base model: {base}\ndata: {target}")
        return 0
    overrides = recipe_overrides(args, recipe_options)
    rows = run_demo(args.output_dir, args.config, seed=args.seed, overrides=overrides)
    if not README.is_file() or overrides or args.seed != 0 or Path(args.config) != DEMO_RECIPE:
        return 0  # the README's table is of the default demo, run from the repository root
    if args.update_readme:
        update_readme(rows, README)
        print(f"wrote the figures into {README}")
        return 0
    try:
        print(check_readme(rows, README))
    except StaleReadme as error:
        return report_error(error, status=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
