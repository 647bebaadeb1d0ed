"""POSAPL's text inputs (the text-input kind ``pos_tags``): CLIP's tokens of the caption normalised as the
release did, and its part-of-speech prior from stanza's UPOS tags, in the form the adapter's config says
(``pos_mode``): ``sentence``, the tokens of the POS sentence (``pos_input_ids``), or ``aligned``, one tag id
per caption token (``pos_tag_ids``).

Tags are kept per tagger in ``<pos_cache>/<tagger key>/tags.jsonl`` (one ``{"text", "tags"}`` per line,
default ``$RSITR_CACHE/pos``), so that every caption of a dataset is tagged once, whichever run, split or
command asks; a line cut short by a kill is skipped and its caption tagged again. An adapter folder records
the tagger
(its path and SHA-256) and the normalisation; search tags queries with that same tagger, or says which file
it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from ..utils.config import option, to_mapping
from ..utils.files import cache_root
from .pos import PAD_TAG_ID, POSModelMissing, StanzaTagger, aligned_tag_ids, normalise_caption, pos_sentence
from .text_inputs import CONTEXT_LENGTH, TextInputs, register_text_inputs


@dataclass
class POSTextOptions:
    """POSAPL's text inputs: the stanza tagger, where its tags are kept, and the caption normalisation."""

    pos_model: str | None = option(
        None, "stanza tagger .pt (default $RSITR_POS_MODEL, else stanza's English model)"
    )
    stanza_dir: str | None = option(None, "stanza resources (default $RSITR_STANZA_DIR)")
    pos_cache: str | None = option(
        None, "where the tags of captions are kept and reused (default $RSITR_CACHE/pos)"
    )
    caption_normalisation: Literal["paper", "words"] = option(
        "paper",
        "paper (the release's: punctuation deleted, '-' and '/' as spaces, 'it's' -> 'its') | words (every "
        "non-alphanumeric character a space, rsitr_hf 0.1's)",
    )


@lru_cache(maxsize=16)
def file_sha256(path: str, size: int, mtime: float) -> str:
    """SHA-256 of the file at ``path`` (cached while its size and time are the same)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    stat = Path(path).stat()
    return file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime)


class TagCache:
    """UPOS tags of normalised captions by one tagger, in ``folder/tags.jsonl`` (appended under a lock)."""

    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / "tags.jsonl"
        self.tags: dict[str, list[str]] = {}
        self.reload()

    def reload(self) -> None:
        """Read what every process has added so far (a line cut short by a kill is skipped)."""
        if not self.path.is_file():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                self.tags[entry["text"]] = entry["tags"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def add(self, found: Mapping[str, list[str]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"text": text, "tags": tags}) + "\n" for text, tags in found.items())
        with FileLock(str(self.folder / ".lock")), open(self.path, "a+b") as file:
            if file.seek(0, os.SEEK_END):
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    file.write(b"\n")  # after a line a kill cut short
            file.write(lines.encode("utf-8"))
        self.tags.update(found)


@register_text_inputs
class POSTextInputs(TextInputs):
    """POSAPL's text inputs (see the module docstring); ``config`` is the adapter's ``POSPromptConfig``."""

    name = "pos_tags"
    summary = "CLIP's tokens of the normalised caption and its part-of-speech tags (stanza), as POSAPL's"
    Options = POSTextOptions

    def __init__(self, tokenizer, config=None, options=None, max_length: int = CONTEXT_LENGTH):
        super().__init__(tokenizer, config, options, max_length)
        self.pos_mode = getattr(config, "pos_mode", "sentence")
        # the tagger, resolved once: what tags (and what the adapter folder records) is exactly this
        self.pos_model = self.options.pos_model or os.environ.get("RSITR_POS_MODEL")
        self.stanza_dir = self.options.stanza_dir or os.environ.get("RSITR_STANZA_DIR")
        self.tagger: StanzaTagger | None = None  # loaded on the first caption the cache does not hold
        self.cache: TagCache | None = None
        self.pieces: dict[str, int] = {}  # BPE pieces per word, for the aligned tags

    def __getstate__(self) -> dict:  # data-loader workers get the inputs without the stanza pipeline
        return {**self.__dict__, "tagger": None}

    def text_of(self, caption: str) -> str:
        return normalise_caption(caption, normalisation=self.options.caption_normalisation)

    def tagger_key(self) -> str:
        """Which tagger tags: its file's SHA-256, or stanza's English model in a resources folder."""
        if self.pos_model:
            if not Path(self.pos_model).is_file():
                StanzaTagger(self.pos_model, self.stanza_dir, environment=False)  # says how to get one
            return sha256_of(self.pos_model)
        return f"stanza English model in {self.stanza_dir or 'stanza_resources'}"

    def tags_of(self, texts: Sequence[str]) -> list[list[str]]:
        """The UPOS tags of each word of each normalised text, from the cache or tagged now."""
        if self.cache is None:
            root = Path(self.options.pos_cache) if self.options.pos_cache else cache_root() / "pos"
            self.cache = TagCache(root / hashlib.sha256(self.tagger_key().encode()).hexdigest()[:16])
        missing = [text for text in dict.fromkeys(texts) if text not in self.cache.tags]
        if missing:
            self.cache.reload()  # another process may have tagged them meanwhile
            missing = [text for text in missing if text not in self.cache.tags]
        if missing:
            if self.tagger is None:
                self.tagger = StanzaTagger(self.pos_model, self.stanza_dir, environment=False)
            found = self.tagger.tag([text.split() for text in missing])
            self.cache.add(dict(zip(missing, found, strict=True)))
        return [self.cache.tags[text] for text in texts]

    def prepare(self, captions: Sequence[str]) -> None:
        self.tags_of([self.text_of(caption) for caption in captions])

    def encode(self, captions: Sequence[str]) -> dict[str, list[list[int]]]:
        texts = [self.text_of(caption) for caption in captions]
        tags = self.tags_of(texts)
        encoded = {"input_ids": self.tokens(texts)}
        if self.pos_mode == "sentence":
            encoded["pos_input_ids"] = self.tokens([pos_sentence(words) for words in tags])
        else:
            encoded["pos_tag_ids"] = [
                aligned_tag_ids(text.split(), words, self.tokenizer, self.max_length, self.pieces)
                for text, words in zip(texts, tags, strict=True)
            ]
        return encoded

    def padding(self) -> dict[str, tuple[int, str | None]]:
        if self.pos_mode == "sentence":
            return {**super().padding(), "pos_input_ids": (self.tokenizer.pad_token_id, None)}
        return {**super().padding(), "pos_tag_ids": (PAD_TAG_ID, "input_ids")}

    def record(self) -> dict:
        """The options with the tagger resolved (its absolute path, or stanza's English model when none) and
        the tagger file's SHA-256; where tags were cached is this machine's business."""
        pos_model = str(Path(self.pos_model).resolve()) if self.pos_model else None
        options = replace(self.options, pos_model=pos_model, stanza_dir=self.stanza_dir, pos_cache=None)
        digest = sha256_of(pos_model) if pos_model else None
        return {"name": self.name, "options": to_mapping(options), "pos_model_sha256": digest}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str, tokenizer, config=None) -> POSTextInputs:
        """The inputs an adapter was trained with, tagging with the same tagger: the recorded file, or a copy
        that ``$RSITR_POS_MODEL`` names (same SHA-256); stanza's English model when it was that."""
        inputs = super().from_record(record, where, tokenizer, config)
        recorded, digest = inputs.options.pos_model, record.get("pos_model_sha256")
        if recorded is None:
            inputs.pos_model = None  # stanza's English model, whatever $RSITR_POS_MODEL says
            return inputs
        candidates = [recorded, os.environ.get("RSITR_POS_MODEL")]
        found = next(
            (c for c in candidates if c and Path(c).is_file() and digest in (None, sha256_of(c))), None
        )
        if found is None:
            raise POSModelMissing(
                f"{where}: the adapter was trained with the POS tagger {recorded} (SHA-256 "
                f"{(digest or 'not recorded')[:16]}), which is not here: copy that file to {recorded}, or "
                "point RSITR_POS_MODEL at a copy (only the same tagger gives the adapter the inputs it was "
                "trained on)"
            )
        inputs.pos_model = found
        return inputs

    @classmethod
    def offline_options(cls, folder: Path) -> dict[str, Any]:
        """A small tagger trained offline by stanza on the packaged UD English-EWT portions (about 3 minutes
        on 2 cores, once, in ``folder/pos_tagger``), unless ``$RSITR_POS_MODEL`` names one."""
        if os.environ.get("RSITR_POS_MODEL"):
            return {}
        from .pos_tagger import train_small_tagger
        from .reference import ud_english_dir

        tagger, ewt = folder / "pos_tagger" / "tagger.pt", ud_english_dir()
        if not tagger.is_file():
            train_small_tagger(ewt / "en_ewt-ud-test.conllu", ewt / "en_ewt-ud-dev.conllu", tagger.parent)
        return {"pos_model": str(tagger)}
