"""The PETL comparison harness (``rsitr-petl``): several methods on the same data, seeds and evaluation.

    rsitr-petl --config benchmarks/petl_synthetic.yaml [--seeds 0 1 2] [--methods lora mrs_hmmc]
        [--output_dir DIR] [--section.field value ...]

A benchmark file (``benchmarks/petl_*.yaml``) names a training recipe shared by every method, the seeds,
and the methods: label -> partial recipe. A partial recipe replaces the shared recipe's ``method``
section and is merged into the other sections (``loss``, ``optimizer`` ...); a method that the method table
declares as not trained (``method: {name: zero_shot}``) evaluates the base model as it is (once: it does not
depend on the seed). ``methods`` may also
be the path of a YAML file holding that mapping, so that several benchmarks share one method list.
``--section.field value`` overrides apply to the shared recipe (``--data.path data/rsitmd_precomp``).

Each (method, seed) run trains in its own process through ``python -m rsitr_hf.training`` (or the
``launcher`` of the benchmark file, e.g. ``[accelerate, launch, -m, rsitr_hf.training]``), so its peak memory
is its own; its outputs go to ``<output_dir>/<method>/seed_<seed>/``. A finished run is never repeated
and an interrupted one resumes from its last checkpoint, so running the same command again completes
an interrupted benchmark. With ``synthetic_task: DIR`` the offline synthetic transfer task of
``rsitr-demo`` (source-pretrained tiny CLIP + target-domain data) is prepared in DIR (or reused) and
becomes the base model and data; POSAPL there uses a small tagger trained offline (cached in DIR).

With ``transfer: [DIR, DIR, ...]`` (seed-layout datasets) every method trains on each dataset in turn and
is tested on all of them (``evaluation.test_datasets``): rows ``<method> @ <dataset>``, outputs in
``<output_dir>/<method>/<dataset>/seed_<seed>/``, and the transfer matrix of each method (trained on ×
tested on, test mR mean ± std) in ``results.md``, ``transfer.csv`` and ``transfer_matrix.png``.

Writes ``results.md`` and ``results.csv`` (trainable parameters and their share of the base model, test
R@1/5/10 both ways and mR as mean ± std over seeds, median wall time per optimiser step, peak memory;
for runs scored on several datasets, test mR by dataset), ``runs.csv`` (one row per run) and
``mr_vs_trainable_parameters.png`` (log scale).
"""

from __future__ import annotations

import sys

from ..training.recipe import add_recipe_arguments, recipe_overrides
from ..utils.cli import command, command_parser, parse_arguments
from .petl_harness import run_benchmark


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        __doc__,
        usage="%(prog)s --config BENCHMARK [--seeds N ...] [--methods NAME ...] [--output_dir DIR] "
        "[--section.field VALUE ...]",
    )
    parser.add_argument("--config", required=True, help="benchmark file (see benchmarks/petl_*.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", help="instead of the file's seeds")
    parser.add_argument("--methods", nargs="+", help="a subset of the file's methods")
    parser.add_argument("--output_dir", help="instead of the file's output_dir")
    recipe_options = add_recipe_arguments(parser, exclude=("output_dir",))
    args = parse_arguments(parser, argv)
    overrides = recipe_overrides(args, recipe_options)
    run_benchmark(args.config, overrides, args.seeds, args.methods, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
