"""How captions become a method's text-tower inputs: the text-input table.

A method's spec names its kind of text inputs (``MethodSpec.text_inputs``); every part of rsitr_hf that turns
captions into model inputs asks that kind, never the method: training (the caption pairs and their batches),
validation and test, search, the web page, zero-shot classification, the audit's embedding method, the result
grids and the PETL harness. A kind is a :class:`TextInputs` subclass registered with
:func:`register_text_inputs`; this base class, ``tokens``, is CLIP's tokenisation, which most methods take.

A kind says:

- ``text_of(caption)``: the text its tower reads (POSAPL: the caption normalised as its release did); the
  evaluation embeds each distinct text once;
- ``encode(captions)``: each caption's inputs, unpadded (``{"input_ids": [[...], ...], ...}``), which
  training computes once per caption; ``prepare(captions)`` may do costly work for many captions at once;
- ``padding()``: how each input is padded into a batch (:meth:`TextInputs.collate`); ``attention_mask``
  follows ``input_ids``;
- ``Options``: a dataclass of its options, the recipe's ``text`` section;
- what an adapter folder records so that search rebuilds the same inputs (:meth:`TextInputs.save`,
  :meth:`TextInputs.from_folder`: ``text_inputs.json``), and ``offline_options(folder)``: options that let
  it run without the network (the PETL harness's offline task uses them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..utils.config import RecipeError, build, to_mapping
from ..utils.errors import InputError, first_line
from ..utils.files import write_json
from ..utils.registry import Table

RECORD_FILE = "text_inputs.json"
CONTEXT_LENGTH = 77  # CLIP's


@dataclass
class NoTextOptions:
    """Text inputs without options."""


class TextInputs:
    """CLIP's tokens of the caption: ``input_ids`` and ``attention_mask``, padded to the batch's longest.

    Args:
        tokenizer: the base model's tokenizer.
        config: the method's PEFT config (``None`` for a method without one), for kinds that depend on it.
        options: an instance of ``Options`` (default: its defaults).
        max_length: captions are truncated to this many tokens (the end token kept).
    """

    name: ClassVar[str] = "tokens"
    summary: ClassVar[str] = "the caption's CLIP tokens"
    Options: ClassVar[type] = NoTextOptions

    def __init__(self, tokenizer, config=None, options=None, max_length: int = CONTEXT_LENGTH):
        self.tokenizer, self.config, self.max_length = tokenizer, config, max_length
        self.options = self.Options() if options is None else options

    def text_of(self, caption: str) -> str:
        """The text the tower reads for ``caption``."""
        return caption

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """CLIP's token ids of ``texts``, truncated to ``max_length``."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def prepare(self, captions: Sequence[str]) -> None:
        """Do at once, for many captions, whatever :meth:`encode` would otherwise do one batch at a time."""

    def encode(self, captions: Sequence[str]) -> dict[str, list[list[int]]]:
        """Each caption's inputs, unpadded."""
        return {"input_ids": self.tokens([self.text_of(caption) for caption in captions])}

    def padding(self) -> dict[str, tuple[int, str | None]]:
        """``{input: (pad value, the input whose length it is padded to, or None: its own longest)}``."""
        return {"input_ids": (self.tokenizer.pad_token_id, None)}

    def collate(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """A batch of encoded captions (one mapping of inputs each) as padded ``(B, L)`` tensors, with
        ``attention_mask`` marking the tokens of ``input_ids``."""
        batch = {}
        for key, (value, length_of) in self.padding().items():
            length = batch[length_of].shape[1] if length_of else None
            batch[key] = pad_sequences([row[key] for row in rows], value, length)
        lengths = torch.tensor([len(row["input_ids"]) for row in rows])
        batch["attention_mask"] = (
            torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]
        ).long()
        return batch

    def __call__(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """The model inputs of ``captions``, padded to the longest."""
        encoded = self.encode(captions)
        return self.collate(
            [{key: values[i] for key, values in encoded.items()} for i in range(len(captions))]
        )

    def record(self) -> dict:
        """What an adapter folder records of these inputs (JSON)."""
        return {"name": self.name, "options": to_mapping(self.options)}

    def save(self, folder: str | os.PathLike) -> None:
        """Write :meth:`record` into ``folder`` as ``text_inputs.json``."""
        write_json(Path(folder) / RECORD_FILE, self.record())

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str, tokenizer, config=None) -> TextInputs:
        """The inputs an adapter was trained with, from its record (``where``: the file, for errors)."""
        try:
            options = build(cls.Options, record.get("options") or {}, "options.", owner=cls.name)
        except RecipeError as error:
            raise InputError(f"{where}: {error}") from None
        return cls(tokenizer, config, options)

    @classmethod
    def from_folder(cls, adapter: str | os.PathLike, tokenizer, config=None) -> TextInputs:
        """The inputs the adapter ``adapter`` (a folder or Hub id) was trained with: its ``text_inputs.json``,
        or the kind's defaults for an adapter saved without one."""
        record, where = read_record(adapter)
        if record is None:
            return cls(tokenizer, config)
        if record.get("name") != cls.name:
            raise InputError(
                f"{where}: field name: {record.get('name')!r}, but the adapter's method takes {cls.name!r} "
                "text inputs (the file belongs to another adapter)"
            )
        return cls.from_record(record, where, tokenizer, config)

    @classmethod
    def offline_options(cls, folder: Path) -> dict[str, Any]:
        """Options (of the recipe's ``text`` section) that let these inputs be made without the network,
        prepared in ``folder`` when they need preparing; none are needed here."""
        return {}


def read_record(adapter: str | os.PathLike) -> tuple[dict | None, str]:
    """``(record, where)``: the ``text_inputs.json`` of an adapter folder, or of a Hub adapter when it has one
    (``None`` when it has none)."""
    folder = Path(adapter)
    path = folder / RECORD_FILE
    if not folder.is_dir():
        path = hub_record(str(adapter))
        if path is None:
            return None, f"{adapter}/{RECORD_FILE}"
    if not path.is_file():
        return None, str(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object with name and options")
    return record, str(path)


def hub_record(repo_id: str) -> Path | None:
    """The ``text_inputs.json`` of the Hub adapter ``repo_id``, downloaded (``None`` when it has none, or
    when it cannot be had: offline, no such repository)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, RECORD_FILE))
    except Exception:  # no such file or repository, offline mode, network errors: the kind's defaults
        return None


def pad_sequences(sequences: Sequence[Sequence[int]], value: int, length: int | None = None) -> torch.Tensor:
    """``(N, length)`` tensor of ``sequences`` right-padded with ``value`` (default: to the longest)."""
    length = length or max(len(sequence) for sequence in sequences)
    return torch.tensor(
        [list(sequence[:length]) + [value] * (length - len(sequence)) for sequence in sequences]
    )


TEXT_INPUTS: Table = Table("kind of text inputs")


def register_text_inputs(kind: type[TextInputs]) -> type[TextInputs]:
    """Add the kind ``kind`` to the text-input table under ``kind.name`` (again: nothing changes)."""
    return TEXT_INPUTS.register(kind.name, kind)


register_text_inputs(TextInputs)


def get_text_inputs(name: str) -> type[TextInputs]:
    """The kind of text inputs ``name``; a ``ValueError`` naming the known kinds otherwise."""
    return TEXT_INPUTS.find(name)


def text_input_options() -> dict[str, type]:
    """``{kind: its options dataclass}`` of every registered kind (the recipe's ``--help`` lists them)."""
    return TEXT_INPUTS.each("Options")


def text_inputs_of(method, tokenizer, config=None, options=None) -> TextInputs:
    """The text inputs of ``method`` (a :class:`~rsitr_hf.tuners.methods.MethodSpec`) with its PEFT
    ``config`` and the recipe's ``options``."""
    return get_text_inputs(method.text_inputs)(tokenizer, config, options)


def adapter_text_inputs(method, adapter: str | os.PathLike | None, tokenizer, config=None) -> TextInputs:
    """The text inputs an adapter was trained with (``method``: its method, ``None`` for a base model alone
    or an adapter no method declares, which take CLIP's tokens)."""
    if method is None or adapter is None:
        return TextInputs(tokenizer, config)
    try:
        kind = get_text_inputs(method.text_inputs)
    except ValueError as error:
        raise InputError(f"{adapter}: {first_line(error)}") from None
    return kind.from_folder(adapter, tokenizer, config)
