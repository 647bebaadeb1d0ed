"""Pushing a trained adapter folder to the Hugging Face Hub with a model card.

``push_adapter`` writes ``README.md`` (model card with ``library_name`` (``peft`` for an adapter,
``transformers`` for a whole model), ``base_model`` (and, for a base converted by ``rsitr-convert``, the
checkpoint it came from), the method's tags and text from the method table,
datasets and a ``model-index`` holding the test metrics of each dataset), then calls ``create_repo`` and
``upload_folder`` on an ``huggingface_hub.HfApi``. The api object can be injected, which is how the
tests exercise the upload offline; with the real ``HfApi`` this needs the network and a token.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from ..evaluation import METRIC_KEYS, ScoredTests, mean_metrics, metrics_table
from ..tuners.methods import MethodSpec, get_method
from .data import dataset_name
from .recipe import Recipe

TAGS = ("remote-sensing", "image-text-retrieval", "rsitr_hf")
METRIC_NAMES = {
    "i2t_r1": "Image-to-text R@1",
    "i2t_r5": "Image-to-text R@5",
    "i2t_r10": "Image-to-text R@10",
    "t2i_r1": "Text-to-image R@1",
    "t2i_r5": "Text-to-image R@5",
    "t2i_r10": "Text-to-image R@10",
    "mR": "mean recall (mR)",
}


class HubPushError(RuntimeError):
    """The upload failed; the local folder is left as it was."""


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
HUB_CACHE_SNAPSHOT = re.compile(r"models--([\w.-]+)--([\w.-]+)[/\\]snapshots[/\\]")


def hub_base_id(base_model: str) -> str | None:
    """The Hub id of ``base_model`` when it is known, else ``None``.

    A name that is not a local folder is taken as a Hub id. A local folder is recognised when it is a
    snapshot in the Hugging Face cache (``…/models--owner--name/snapshots/<sha>``) or when its
    ``config.json`` records a Hub id as ``_name_or_path`` (transformers writes the id it was loaded from).
    """
    path = Path(base_model)
    if not path.exists():
        return base_model if HUB_ID.match(base_model) else None
    cached = HUB_CACHE_SNAPSHOT.search(str(path.resolve()))
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    config = path / "config.json"
    if config.is_file():
        recorded = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or ""
        if HUB_ID.match(recorded) and not Path(recorded).exists():
            return recorded
    return None


def base_source(base_model: str) -> dict | None:
    """What ``rsitr-convert`` recorded about a converted base (its ``config.json``'s ``rsitr_source``), or
    ``None`` for a base that was not converted (or is not a local folder)."""
    config = Path(base_model) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("rsitr_source")


def source_sentence(source: dict) -> str:
    """The card's sentence naming the checkpoint a converted base came from."""
    origin = f" of `{source['source']}`" if source.get("source") else ""
    lowest = min(source.get("lowest_cosine", {}).values(), default=None)
    check = (
        f"; its embeddings equal the checkpoint's (lowest cosine {lowest:.6f})" if lowest is not None else ""
    )
    return (
        f" The base model was converted to transformers with `rsitr-convert` from `{source['checkpoint']}`"
        f"{origin} (SHA-256 `{source['sha256'][:16]}…`, {source['activation']}){check}."
    )


def loading_snippet(method: MethodSpec, base_id: str | None, repo_id: str) -> str:
    """How the card says to load the model: an adapter onto its base, or a whole model."""
    if not method.is_peft:
        return f"""from transformers import CLIPModel, CLIPProcessor

model = CLIPModel.from_pretrained("{repo_id}")
processor = CLIPProcessor.from_pretrained("{repo_id}")"""
    return f"""import rsitr_hf  # registers the rsitr_hf PEFT methods with peft
from peft import PeftModel
from transformers import CLIPModel, CLIPProcessor

base = CLIPModel.from_pretrained("{base_id or "path/to/the/base/model"}")
model = PeftModel.from_pretrained(base, "{repo_id}")
processor = CLIPProcessor.from_pretrained("{repo_id}")"""


def model_card(recipe: dict, test_results: dict[str, dict[str, float]], repo_id: str) -> ModelCard:
    """The model card of a model trained with ``recipe`` (a ``Recipe.to_dict()``) whose test metrics on each
    dataset are ``test_results`` (``{dataset: metrics}``): tags, text and loading instructions from its
    method's entry in the method table, a ``model-index`` entry per dataset and metric, and a table with
    their mean when there are several."""
    method = get_method(recipe["method"]["name"])
    eval_results = [
        EvalResult(
            task_type="image-text-retrieval",
            task_name="Image-text retrieval",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split="test",
            metric_type=key,
            metric_name=METRIC_NAMES[key],
            metric_value=round(float(metrics[key]), 2),
        )
        for dataset, metrics in test_results.items()
        for key in METRIC_KEYS
        if key in metrics
    ]
    several = len(recipe.get("data", {}).get("datasets") or []) > 1
    selection = "the mean validation mR of the datasets trained on" if several else "the validation split"
    rows = dict(test_results)
    if len(rows) > 1:
        rows["mean"] = mean_metrics(list(test_results.values()))
    base_id = hub_base_id(recipe["base_model"])
    library = "peft" if method.is_peft else "transformers"
    card_data = ModelCardData(
        library_name=library,
        base_model=base_id,
        tags=[*(["peft"] if method.is_peft else []), *TAGS, *method.hub_tags],
        datasets=list(test_results),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    what = "adapter" if method.is_peft else "model"
    if base_id:
        base_sentence = f"[`{base_id}`](https://huggingface.co/{base_id})"
    else:
        base_sentence = (
            f"a local base model (`{recipe['base_model']}` on the machine that trained it; it is not on the "
            f"Hub under a known id). Load the {what} onto the same base weights"
        )
    source = base_source(recipe["base_model"])
    converted = source_sentence(source) if source else ""
    content = f"""---
{card_data.to_yaml()}
---

# {repo_id.split("/")[-1]}

A `{method.name}` {what} for remote sensing image-text retrieval on top of {base_sentence}, trained
with `rsitr_hf` (`accelerate launch train_accelerate.py`).{converted} {method.card_text}

## How to load it

```python
{loading_snippet(method, base_id, repo_id)}
```

## Test results (percent)

{metrics_table(rows, label="test split of")}

Recall@K by the RSITR protocol (image-to-text: best rank among an image's 5 captions); checkpoint
selected on {selection}, test evaluated once.

## Training recipe

```yaml
{yaml.safe_dump(recipe, sort_keys=False).strip()}
```
"""
    return ModelCard(content)


def push_run(recipe: Recipe, tested: ScoredTests) -> str:
    """Push a finished run's ``adapter/`` with its card (:func:`push_adapter`; the test figures of each of the
    run's datasets and of ``evaluation.test_datasets``)."""
    results = {name: metrics for name, metrics in tested.by_dataset.items() if name != "mean"}
    results = results or {dataset_name(recipe): tested.metrics}
    folder = Path(recipe.output_dir) / "adapter"
    return push_adapter(folder, recipe.hub.model_id, recipe.to_dict(), results, recipe.hub.private)


def push_adapter(
    folder: str | os.PathLike,
    repo_id: str,
    recipe: dict,
    test_results: dict[str, dict[str, float]],
    private: bool = False,
    api: HfApi | None = None,
    commit_message: str = "Upload rsitr_hf adapter",
) -> str:
    """Write the model card (:func:`model_card`, test metrics ``{dataset: metrics}``) into ``folder`` and
    upload the folder to the model repo ``repo_id``.

    Returns the repo URL. Raises :class:`HubPushError` with the cause when creating the repo or
    uploading fails (offline, no token, no permission); ``folder`` is kept intact either way.
    """
    folder = Path(folder)
    model_card(recipe, test_results, repo_id).save(folder / "README.md")
    api = api or HfApi()
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=str(folder), commit_message=commit_message
        )
    except Exception as error:  # offline mode, network, auth and HTTP errors all mean the same here
        raise HubPushError(
            f"could not push {folder} to the Hub repo {repo_id!r}: {type(error).__name__}: {error}. "
            f"The adapter is saved locally in {folder}; push it later with "
            f"`hf upload {repo_id} {folder}` once online and logged in."
        ) from error
    return str(url)
