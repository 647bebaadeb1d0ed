"""Zero-shot scene classification with a CLIP model, as RS CLIP papers report it beside retrieval.

A dataset is a folder of class folders (the AID, RESISC45, UCM-21 and EuroSAT layouts): every image in
``<root>/<class>/`` belongs to that class. Each class is described by prompt templates filled with its
name; the class's text embedding is the normalised mean of its prompts' normalised embeddings (CLIP's
prompt ensembling), and an image is assigned the class of highest cosine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.images import IMAGE_SUFFIXES, read_rgb
from ..data.text_inputs import TextInputs
from ..utils.errors import InputError
from .embedding import image_embeddings, text_embeddings

DEFAULT_TEMPLATES = ("a satellite photo of a {}.",)


@dataclass
class ClassFolders:
    """A class-labelled image dataset: ``files[i]`` has label ``labels[i]``, an index into ``class_names``
    (its folders in sorted order)."""

    root: Path
    folders: list[str]
    class_names: list[str]
    files: list[Path]
    labels: list[int]


@dataclass
class ClassificationResult:
    """Top-1 and top-5 accuracy (in %) of one model on one dataset, and its predictions (``(N,)`` labels)."""

    dataset: str
    num_classes: int
    num_images: int
    top1: float
    top5: float
    predictions: torch.Tensor


def clean_class_name(folder: str) -> str:
    """A folder name as words: ``baseball_diamond`` / ``BaseballField`` / ``Annual-Crop`` ->
    ``baseball diamond`` / ``baseball field`` / ``annual crop``. Run-together names (UCM's
    ``baseballdiamond``) stay as they are: give those through ``class_names``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", folder)
    return " ".join(re.sub(r"[_\-.]+", " ", spaced).lower().split())


def read_class_folders(root: str | os.PathLike, class_names: dict[str, str] | None = None) -> ClassFolders:
    """The images under ``root/<class>/``; ``class_names`` maps folder names to the names put into the
    prompts (folders not in it get :func:`clean_class_name`; see :func:`check_class_names`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (expected one folder per class)")
    folders = sorted(path.name for path in root.iterdir() if path.is_dir())
    if len(folders) < 2:
        raise InputError(f"{root}: expected one folder per class, found {len(folders)} folder(s)")
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputError(f"{root / folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    names = [(class_names or {}).get(folder, clean_class_name(folder)) for folder in folders]
    return ClassFolders(root, folders, names, files, labels)


def check_templates(templates: Sequence[str]) -> None:
    """Each prompt template must hold one ``{}``, where the class name goes."""
    if not templates:
        raise InputError("prompt templates: none given")
    for template in templates:
        if template.count("{}") != 1:
            raise InputError(f"prompt template {template!r}: expected exactly one '{{}}' for the class name")


def check_class_names(class_names: dict[str, str] | None, datasets: Sequence[ClassFolders]) -> None:
    """Every folder name given a class name must be a class folder of one of ``datasets``."""
    folders = {folder for dataset in datasets for folder in dataset.folders}
    unknown = sorted(set(class_names or {}) - folders)
    if unknown:
        roots = ", ".join(str(dataset.root) for dataset in datasets)
        raise InputError(f"class_names: {unknown} are not class folders of {roots}")


def prompts_of(class_name: str, templates: Sequence[str]) -> list[str]:
    """``class_name`` put into each template."""
    check_templates(templates)
    return [template.format(class_name) for template in templates]


def class_embeddings(
    embed_texts: Callable[[list[str]], torch.Tensor], class_names: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """``(C, D)``: per class, the normalised mean of its prompts' unit embeddings (``embed_texts`` gives
    ``(P, D)`` unit rows for ``P`` prompts)."""
    rows = [embed_texts(prompts_of(name, templates)).mean(dim=0) for name in class_names]
    return F.normalize(torch.stack(rows), dim=-1)


def classify(
    image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: Sequence[int], dataset: str = ""
) -> ClassificationResult:
    """Accuracy of assigning each of ``(N, D)`` unit ``image_embeds`` the class of highest cosine."""
    scores = image_embeds @ class_embeds.T
    truth = torch.as_tensor(list(labels))
    ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
    return ClassificationResult(
        dataset=dataset,
        num_classes=class_embeds.shape[0],
        num_images=len(truth),
        top1=100.0 * (ranked[:, 0] == truth).float().mean().item(),
        top5=100.0 * (ranked == truth[:, None]).any(dim=1).float().mean().item(),
        predictions=ranked[:, 0],
    )


@torch.no_grad()
def embed_folder(
    model: torch.nn.Module, image_processor, dataset: ClassFolders, batch_size: int
) -> torch.Tensor:
    """``(N, D)`` unit embeddings of the dataset's images, in its order (``model``: a CLIP-like model)."""
    rows = []
    for start in range(0, len(dataset.files), batch_size):
        images = [read_rgb(path) for path in dataset.files[start : start + batch_size]]
        rows.append(image_embeddings(model, image_processor, images).cpu())
    return torch.cat(rows)


def evaluate_class_folders(
    model: torch.nn.Module,
    processor,
    dataset: ClassFolders,
    templates: Sequence[str],
    batch_size: int = 64,
    text_inputs: TextInputs | None = None,
) -> ClassificationResult:
    """Zero-shot classification of ``dataset`` by a CLIP-like ``model`` with its ``processor``; the prompts
    become the model's text inputs as captions do for retrieval (``text_inputs``, the method's kind; default:
    CLIP's tokens), padded to the longest prompt."""
    text_inputs = text_inputs or TextInputs(processor.tokenizer)

    @torch.no_grad()
    def embed_texts(prompts: list[str]) -> torch.Tensor:
        return text_embeddings(model, text_inputs(prompts)).cpu()

    classes = class_embeddings(embed_texts, dataset.class_names, templates)
    images = embed_folder(model, processor.image_processor, dataset, batch_size)
    return classify(images, classes, dataset.labels, dataset.root.name)
