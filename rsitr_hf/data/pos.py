"""Part-of-speech priors for POSAPL: caption normalisation, stanza UPOS tagging, and the two prior forms.

For every caption of a DatasetDict of the RSITR schema, :func:`add_pos_columns` adds (one entry per
caption, 5 per row, tagging each distinct caption once):

- ``pos_captions``: the caption normalised as POSAPL trains on it (lower case, punctuation removed,
  at most 30 words); the other columns describe this text;
- ``pos_tags``: the UPOS tag of each word (stanza ``tokenize,pos`` on the whitespace-split words);
- ``pos_sentences``: the published "POS sentence" (DET -> "determiner", NOUN -> "noun", ...);
- ``pos_tag_ids``: one tag id per CLIP token of the caption, every BPE piece of a word carrying its
  word's tag, ``SPECIAL_TAG_ID`` at the start/end tokens (``PAD_TAG_ID`` is for padding).

``rsitr-pos-tag`` saves the result with ``save_to_disk``, to inspect the tags; training, evaluation and
search tag captions through POSAPL's text inputs (:mod:`rsitr_hf.data.pos_inputs`), which keep the tags of
every caption they met.

Stanza's English models are not on PyPI. Online: ``stanza.download("en", processors="tokenize,pos")``.
Offline: pass a tagger file (``pos_model_path=`` or ``RSITR_POS_MODEL``) and/or a resources directory
(``resources_dir=`` or ``RSITR_STANZA_DIR``); without either, :class:`StanzaTagger` explains this.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import datasets

from ..utils.errors import InputError

UPOS_TAGS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
SPECIAL_TAG_ID = len(UPOS_TAGS)
PAD_TAG_ID = SPECIAL_TAG_ID + 1
NUM_POS_TAGS = PAD_TAG_ID + 1
# the release's tag words; PUNCT (rare once punctuation is removed) joins X and SYM as "x"
POS_WORDS = {
    "DET": "determiner", "ADJ": "adjective", "NOUN": "noun", "ADP": "adposition", "VERB": "verb",
    "AUX": "auxiliary", "PRON": "pronoun", "PROPN": "pronoun", "CCONJ": "conjunction", "SCONJ": "conjunction",
    "NUM": "numeral", "ADV": "adverb", "PART": "participle", "INTJ": "interjection", "X": "x", "SYM": "x",
    "PUNCT": "x",
}  # fmt: skip
MAX_WORDS = 30
DOWNLOAD_HINT = (
    "Get stanza's English tagger with `python -c \"import stanza; stanza.download('en', "
    "processors='tokenize,pos')\"` (needs the network), or, offline, point RSITR_POS_MODEL (or "
    "pos_model_path=) at a tagger .pt file trained by `python -m stanza.models.tagger` and/or "
    "RSITR_STANZA_DIR (or resources_dir=) at a stanza resources directory."
)


class POSModelMissing(InputError, RuntimeError):
    """stanza's English POS model is not available here; the message says how to get it."""


NORMALISATIONS = ("paper", "words")
RELEASE_DELETED = str.maketrans("", "", ",.'!?\"()*#:;~")  # removed without a space, as the release does
RELEASE_SPACED = re.compile(r"[-/]")


def normalise_caption(caption: str, max_words: int = MAX_WORDS, normalisation: str = "paper") -> str:
    """The caption as POSAPL trains on it, at most ``max_words`` words.

    ``paper`` (the release, exactly): lower case; delete ``, . ' ! ? " ( ) * # : ; ~`` (no space: "it's" ->
    "its", "building,a" -> "buildinga"); ``-`` and ``/`` become a space and ``<person>`` becomes
    ``person``; whitespace runs collapse to one space; other characters (underscores, non-ASCII such as a
    typographic apostrophe) are kept. ``words`` (rsitr_hf 0.1): every character that is not a letter,
    digit or space, underscores included, becomes a space ("it's" -> "it s"). An empty result raises
    :class:`InputError`.
    """
    if normalisation == "paper":
        text = caption.lower().replace("<person>", "person").translate(RELEASE_DELETED)
        words = RELEASE_SPACED.sub(" ", text).split()
    elif normalisation == "words":
        words = re.sub(r"[^\w\s]|_", " ", caption.lower()).split()
    else:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if not words:
        raise InputError(f"caption {caption!r} is empty once normalised for POSAPL ({normalisation})")
    return " ".join(words[:max_words])


class StanzaTagger:
    """UPOS tags of pre-split words with stanza's real pipeline (``tokenize,pos``, pretokenized).

    Args:
        pos_model_path: a tagger ``.pt`` file; default ``$RSITR_POS_MODEL``, else stanza's English model.
        resources_dir: stanza's resources directory; default ``$RSITR_STANZA_DIR``, else stanza's default.
        batch_size: sentences per stanza call.
        environment: read those defaults from the environment (``False``: what is not given is stanza's).
    """

    def __init__(
        self,
        pos_model_path: str | None = None,
        resources_dir: str | None = None,
        batch_size: int = 512,
        environment: bool = True,
    ):
        import stanza

        if environment:
            pos_model_path = pos_model_path or os.environ.get("RSITR_POS_MODEL")
            resources_dir = resources_dir or os.environ.get("RSITR_STANZA_DIR")
        options = {
            "processors": "tokenize,pos",
            "tokenize_pretokenized": True,
            "download_method": None,
            "logging_level": "WARN",
            "pos_batch_size": batch_size,
        }
        if pos_model_path:
            if not Path(pos_model_path).is_file():
                raise POSModelMissing(f"POS model file {pos_model_path} not found. {DOWNLOAD_HINT}")
            resources_dir = resources_dir or minimal_resources_dir()
            options.update(pos_model_path=str(pos_model_path), pos_pretrain_path=None)
        if resources_dir:
            options["dir"] = str(resources_dir)
        try:
            self.pipeline = stanza.Pipeline("en", **options)
        except Exception as error:  # stanza raises several types for missing resources
            raise POSModelMissing(
                f"could not load stanza's English POS tagger ({error}). {DOWNLOAD_HINT}"
            ) from error
        self.batch_size = batch_size

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """One UPOS tag per word of each sentence (an empty sentence gets no tags)."""
        tags: list[list[str]] = [[] for _ in sentences]
        non_empty = [index for index, words in enumerate(sentences) if words]
        for start in range(0, len(non_empty), self.batch_size):
            chunk = non_empty[start : start + self.batch_size]
            document = self.pipeline([list(sentences[index]) for index in chunk])
            for index, sentence in zip(chunk, document.sentences, strict=True):
                tags[index] = [word.upos for word in sentence.words]
        return tags


def minimal_resources_dir() -> str:
    """A stanza resources directory that declares English and nothing else (for local model files)."""
    directory = Path(tempfile.gettempdir()) / "rsitr_hf_stanza_resources"
    (directory / "en").mkdir(parents=True, exist_ok=True)
    (directory / "resources.json").write_text(
        json.dumps({"en": {"lang_name": "English", "default_processors": {}}}), encoding="utf-8"
    )
    return str(directory)


def pos_sentence(tags: Sequence[str]) -> str:
    """The release's POS sentence: ``["DET", "NOUN"]`` -> ``"determiner noun"``."""
    return " ".join(POS_WORDS.get(tag, "x") for tag in tags)


def aligned_tag_ids(
    words: Sequence[str],
    tags: Sequence[str],
    tokenizer,
    max_length: int = 77,
    pieces_cache: dict | None = None,
) -> list[int]:
    """One tag id per CLIP token of ``" ".join(words)``: start, each word's BPE pieces, end.

    Truncated like the tokenizer truncates (the end token kept) to ``max_length`` tokens.
    """
    pieces_cache = {} if pieces_cache is None else pieces_cache
    ids = [SPECIAL_TAG_ID]
    for word, tag in zip(words, tags, strict=True):
        if word not in pieces_cache:
            pieces_cache[word] = len(tokenizer(word, add_special_tokens=False)["input_ids"])
        ids.extend([UPOS_TAGS.index(tag)] * pieces_cache[word])
    return ids[: max_length - 1] + [SPECIAL_TAG_ID]


POS_COLUMNS = ("pos_captions", "pos_tags", "pos_sentences", "pos_tag_ids")
POS_FEATURES = {
    "pos_captions": datasets.List(datasets.Value("string")),
    "pos_tags": datasets.List(datasets.List(datasets.Value("string"))),
    "pos_sentences": datasets.List(datasets.Value("string")),
    "pos_tag_ids": datasets.List(datasets.List(datasets.Value("int64"))),
}


def add_pos_columns(
    dataset_dict: datasets.DatasetDict,
    tagger: StanzaTagger,
    tokenizer,
    max_length: int = 77,
    normalisation: str = "paper",
) -> datasets.DatasetDict:
    """Add ``pos_captions``, ``pos_tags``, ``pos_sentences``, ``pos_tag_ids`` (5 per row) to every split,
    the captions normalised by ``normalisation`` (see :func:`normalise_caption`)."""
    pieces_cache: dict[str, int] = {}

    def annotate(batch: dict) -> dict:
        normalised = [
            [normalise_caption(caption, normalisation=normalisation) for caption in captions]
            for captions in batch["captions"]
        ]
        distinct = list(dict.fromkeys(caption for group in normalised for caption in group))
        tags = dict(zip(distinct, tagger.tag([caption.split() for caption in distinct]), strict=True))
        return {
            "pos_captions": normalised,
            "pos_tags": [[tags[caption] for caption in group] for group in normalised],
            "pos_sentences": [[pos_sentence(tags[caption]) for caption in group] for group in normalised],
            "pos_tag_ids": [
                [
                    aligned_tag_ids(caption.split(), tags[caption], tokenizer, max_length, pieces_cache)
                    for caption in group
                ]
                for group in normalised
            ],
        }

    tagged = dataset_dict.map(annotate, batched=True, batch_size=1000, desc="POS tagging")
    for name, split in tagged.items():  # map leaves an empty split as it is: give it the columns too
        if len(split) == 0:
            tagged[name] = with_empty_pos_columns(split)
    return tagged


def with_empty_pos_columns(split: datasets.Dataset) -> datasets.Dataset:
    """An empty ``split`` with the POS columns added (typed as a tagged split's)."""
    features = datasets.Features({**split.features, **POS_FEATURES})
    return datasets.Dataset.from_dict({column: [] for column in features}, features=features)
