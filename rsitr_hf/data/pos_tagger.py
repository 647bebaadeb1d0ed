"""Train a small stanza UPOS tagger offline (what ``rsitr-train-tagger`` runs), for air-gapped machines and
tests.

stanza's own trainer (``python -m stanza.models.tagger``) runs on Universal Dependencies CoNLL-U files
prepared to look like normalised captions: lower case, punctuation tokens removed, XPOS and FEATS
blanked (only UPOS is needed, and the feature classifier dominates training time). No pretrained
word vectors and no character model keep it to a few minutes on 2 CPU cores. Point
``RSITR_POS_MODEL`` (or ``StanzaTagger(pos_model_path=...)``) at the resulting ``.pt`` file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SMALL_TAGGER_OPTIONS = (
    "--no_pretrain", "--no_char", "--word_emb_dim", "50", "--tag_emb_dim", "25", "--transformed_dim", "50",
    "--hidden_dim", "64", "--deep_biaff_hidden_dim", "64", "--composite_deep_biaff_hidden_dim", "32",
    "--batch_size", "250",
)  # fmt: skip


def caption_like_conllu(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rewrite a CoNLL-U file the way captions look after normalisation (see module docstring).

    Multi-word token lines and empty nodes are dropped, words renumbered; heads become a flat tree
    (the tagger ignores them, the reader needs them).
    """
    lines, sentence = [], []

    def flush() -> None:
        words = [columns for columns in sentence if columns[3] != "PUNCT"]
        for index, columns in enumerate(words, start=1):
            columns = [
                str(index),
                columns[1].lower(),
                columns[2].lower(),
                columns[3],
                "_",
                "_",
                "0" if index == 1 else "1",
                "root" if index == 1 else "dep",
                "_",
                "_",
            ]
            lines.append("\t".join(columns) + "\n")
        if words:
            lines.append("\n")
        sentence.clear()

    for line in Path(source).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            flush()
        elif not line.startswith("#"):
            columns = line.split("\t")
            if columns[0].isdigit():
                sentence.append(columns)
    flush()
    Path(target).write_text("".join(lines), encoding="utf-8")
    return Path(target)


def read_conllu_upos(path: str | os.PathLike) -> list[tuple[list[str], list[str]]]:
    """``(words, upos tags)`` of every sentence of a CoNLL-U file."""
    sentences, words, tags = [], [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
        elif not line.startswith("#"):
            columns = line.split("\t")
            if columns[0].isdigit():
                words.append(columns[1])
                tags.append(columns[3])
    return sentences


def train_small_tagger(
    train_conllu: str | os.PathLike,
    dev_conllu: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_steps: int = 600,
) -> Path:
    """Prepare both files, train with stanza's trainer, return the path of ``tagger.pt`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = caption_like_conllu(train_conllu, out_dir / "train.conllu")
    dev = caption_like_conllu(dev_conllu, out_dir / "dev.conllu")
    command = [
        sys.executable, "-m", "stanza.models.tagger", "--mode", "train",
        "--lang", "en", "--shorthand", "en_ewt", "--train_file", str(train), "--eval_file", str(dev),
        "--output_file", str(out_dir / "dev.pred.conllu"),
        *SMALL_TAGGER_OPTIONS, "--max_steps", str(max_steps), "--eval_interval", str(max_steps),
        "--save_dir", str(out_dir), "--save_name", "tagger.pt",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"stanza's tagger training failed:\n{result.stderr[-3000:]}")
    return out_dir / "tagger.pt"
