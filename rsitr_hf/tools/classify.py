"""Zero-shot scene classification of class-folder datasets (AID, RESISC45, UCM-21, EuroSAT layouts).

``rsitr-classify FOLDER [FOLDER ...] --model BASE [--adapter DIR]`` embeds every image of each folder of
class folders and one text per class (each prompt template filled with the class name, averaged), assigns
each image the class of highest cosine and prints top-1 / top-5 accuracy. With ``--adapter`` it does so
for the base model (adapter disabled) and for the adapted one, and prints the adapted model's retention of
the base's top-1 accuracy: what adapting CLIP to retrieval costs on scene classification. The prompts become
each model's text inputs as captions do (the base: CLIP's tokens; the adapter: its method's kind).
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

from ..data.text_inputs import TextInputs
from ..evaluation.classification import (
    DEFAULT_TEMPLATES,
    check_class_names,
    check_templates,
    evaluate_class_folders,
    read_class_folders,
)
from ..evaluation.inference import RetrievalModel
from ..utils.cli import command, command_parser, parse_arguments
from ..utils.errors import InputError
from ..utils.files import write_json


def read_class_names(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"--class_names {path}: not JSON ({error})") from None
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise InputError(f"--class_names {path}: expected an object mapping folder names to class names")
    return names


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="a folder of class folders")
    parser.add_argument("--model", required=True, help="base CLIP model (Hub id or folder)")
    parser.add_argument("--adapter", default=None, help="PEFT adapter folder: evaluated beside the base")
    parser.add_argument(
        "--templates", nargs="+", default=list(DEFAULT_TEMPLATES), help="prompt templates, each with one {}"
    )
    parser.add_argument(
        "--class_names", default=None, help="JSON file mapping folder names to the names used in prompts"
    )
    parser.add_argument("--batch_size", type=int, default=64, help="images embedded at a time")
    parser.add_argument("--output", default=None, help="also write the results to this JSON file")
    args = parse_arguments(parser, argv)
    names = read_class_names(args.class_names)
    datasets = [read_class_folders(folder, names) for folder in args.folders]
    check_class_names(names, datasets)
    check_templates(args.templates)
    model = RetrievalModel(args.model, args.adapter)
    base_inputs = TextInputs(model.processor.tokenizer)
    variants = {"base": (nullcontext, base_inputs)}
    if args.adapter:
        variants = {
            "base": (model.model.disable_adapter, base_inputs),
            "adapted": (nullcontext, model.text_inputs),
        }
    results = []
    print("| dataset | classes | images | model | top-1 | top-5 |\n|---|---|---|---|---|---|")
    for dataset in datasets:
        found = {}
        for variant, (context, text_inputs) in variants.items():
            with context():
                found[variant] = result = evaluate_class_folders(
                    model.model, model.processor, dataset, args.templates, args.batch_size, text_inputs
                )
            print(
                f"| {result.dataset} | {result.num_classes} | {result.num_images} | {variant} | "
                f"{result.top1:.2f} | {result.top5:.2f} |"
            )
        entry = {"dataset": str(dataset.root), "class_names": dataset.class_names}
        entry |= {variant: {"top1": result.top1, "top5": result.top5} for variant, result in found.items()}
        if "adapted" in found and found["base"].top1 > 0:
            entry["retention_top1"] = found["adapted"].top1 / found["base"].top1
        results.append(entry)
    for entry in results:
        if "retention_top1" in entry:
            name = Path(entry["dataset"]).name
            print(
                f"{name}: the adapted model keeps {entry['retention_top1']:.3f} of the base's top-1 accuracy"
            )
    if args.output:
        write_json(Path(args.output), {"templates": args.templates, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
