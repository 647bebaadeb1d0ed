"""A POSAPL adapter is searchable by text in every command that takes text: its queries become POSAPL's text
inputs (normalised, tagged by the tagger its folder records), in rsitr-search (queries and
--calibration_texts), rsitr-app (in chromium too), rsitr-visualize, rsitr-classify and rsitr-audit --model;
a missing tagger is one line saying which file is needed."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, randomise_parameters
from peft import get_peft_model
from transformers import CLIPModel, CLIPTokenizer

from rsitr_hf import POSPromptConfig
from rsitr_hf.data.images import read_rgb
from rsitr_hf.data.pos import StanzaTagger, normalise_caption, pos_sentence
from rsitr_hf.data.pos_inputs import POSTextInputs, POSTextOptions
from rsitr_hf.evaluation.inference import RetrievalModel
from rsitr_hf.search import main as search_main
from rsitr_hf.search.visualize import main as visualize_main
from rsitr_hf.tools.audit import main as audit_main
from rsitr_hf.tools.classify import main as classify_main

QUERIES = ["Many planes are parked at the airport.", "a river next to green fields"]


@pytest.fixture(scope="module")
def posapl_dir(tmp_path_factory, tiny_clip_dir, stanza_tagger_path) -> Path:
    """A POSAPL adapter (random weights, so that its POS prior matters) saved with the record of its text
    inputs, as a training run saves it: the test tagger, the release's normalisation."""
    folder = tmp_path_factory.mktemp("posapl") / "adapter"
    config = POSPromptConfig(adapter_dim=16, adapter_heads=2, fusion_layers=[1, 1, 2, 2], init_weights=False)
    model = get_peft_model(CLIPModel.from_pretrained(tiny_clip_dir), config)
    randomise_parameters(model, "posapl_", seed=3)
    model.save_pretrained(folder)
    options = POSTextOptions(pos_model=str(stanza_tagger_path), pos_cache=str(folder.parent / "tags"))
    POSTextInputs(CLIPTokenizer.from_pretrained(tiny_clip_dir), config, options).save(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory, synthetic_dir) -> Path:
    folder = tmp_path_factory.mktemp("posapl_images") / "images"
    folder.mkdir()
    for path in sorted((synthetic_dir / "synthrs_images").glob("test_*.tif"))[:8]:
        shutil.copy(path, folder / path.name)
    return folder


def test_queries_are_tagged_by_the_recorded_tagger_and_embedded_with_their_pos_sentence(
    posapl_dir, tiny_clip_dir, stanza_tagger_path
):
    model = RetrievalModel(tiny_clip_dir, posapl_dir, device="cpu")
    assert model.method.name == "pos_prompt" and model.text_inputs.pos_model == str(stanza_tagger_path)
    record = json.loads((posapl_dir / "text_inputs.json").read_text())
    assert record["name"] == "pos_tags" and record["options"]["caption_normalisation"] == "paper"
    # the same embeddings computed by hand: normalise, tag with stanza, tokenise caption and POS sentence
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    texts = [normalise_caption(query) for query in QUERIES]
    sentences = [
        pos_sentence(tags) for tags in StanzaTagger(str(stanza_tagger_path)).tag([t.split() for t in texts])
    ]
    captions = tokenizer(texts, padding="longest", return_tensors="pt")
    pos = tokenizer(sentences, padding="longest", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        features = model.model.get_text_features(**captions, pos_input_ids=pos).pooler_output
    torch.testing.assert_close(model.embed_texts(QUERIES), torch.nn.functional.normalize(features, dim=-1))
    without_prior = model.model.get_text_features(**captions, pos_input_ids=torch.zeros_like(pos))
    assert not torch.allclose(features, without_prior.pooler_output)  # the POS prior changes them


def test_rsitr_search_rsitr_visualize_and_the_app_answer_text_queries(
    posapl_dir, tiny_clip_dir, images, tmp_path, capsys
):
    index = tmp_path / "index"
    (tmp_path / "searches.txt").write_text("\n".join(QUERIES) + "\n")
    arguments = ["index", str(images), "--index", str(index), "--model", str(tiny_clip_dir)]
    assert search_main([*arguments, "--adapter", str(posapl_dir), "--ann", "flat",
                        "--calibration_texts", str(tmp_path / "searches.txt")]) == 0  # fmt: skip
    capsys.readouterr()
    assert (
        search_main(["query", "--index", str(index), "--text", QUERIES[0], "--json", "-", "--top_k", "3"])
        == 0
    )
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    model = RetrievalModel(tiny_clip_dir, posapl_dir, device="cpu")
    paths = sorted(images.iterdir())
    expected = (model.embed_texts([QUERIES[0]]) @ model.embed_images([read_rgb(p) for p in paths]).T)[0].topk(
        3
    )
    names = [path.name for path in paths]
    assert [Path(hit["path"]).name for hit in hits] == [names[i] for i in expected.indices.tolist()]
    assert [hit["score"] for hit in hits] == pytest.approx(expected.values.tolist(), abs=1e-5)

    (tmp_path / "queries.tsv").write_text(f"{QUERIES[1]}\n")
    assert visualize_main(["--index", str(index), "--queries", str(tmp_path / "queries.tsv"),
                           "--out", str(tmp_path / "grid.png")]) == 0  # fmt: skip
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"

    pytest.importorskip("gradio", reason="rsitr-app needs gradio (pip install -e '.[app]')")
    from rsitr_hf.search.app import SearchPage

    page = SearchPage.open(index)
    gallery, _, _ = page.text_query(QUERIES[0], 3)
    assert [caption for _, caption in gallery] == [
        f"{rank}. {Path(hit['path']).name} ({hit['score']:.3f})" for rank, hit in enumerate(hits, 1)
    ]


def test_in_a_browser_a_posapl_index_answers_a_typed_query(
    posapl_dir, tiny_clip_dir, images, tmp_path, browser
):
    from browser import ask_text, open_page

    from rsitr_hf.search import build_index, search_images
    from rsitr_hf.search.app import SearchPage, build_app

    build_index(images, tmp_path / "index", RetrievalModel(tiny_clip_dir, posapl_dir), batch_size=4)
    page = SearchPage.open(tmp_path / "index")
    expected = search_images(page.index, page.model, [QUERIES[0]], k=3)[0]
    blocks = build_app(page, 3)
    blocks.launch(prevent_thread_lock=True, quiet=True)
    try:
        open_page(browser, blocks.local_url)
        answer = ask_text(browser, QUERIES[0])
    finally:
        blocks.close()
    assert answer.captions == [f"{h.rank}. {h.item} ({h.score:.3f})" for h in expected]


def test_zero_shot_classification_and_the_audit_take_a_posapl_adapter(
    posapl_dir, tiny_clip_dir, images, tmp_path, synthetic_dir, capsys
):
    classes = tmp_path / "classes"
    for number, path in enumerate(sorted(images.iterdir())[:4]):
        (classes / ("harbor" if number % 2 else "airport")).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, classes / ("harbor" if number % 2 else "airport") / path.name)
    output = tmp_path / "classes.json"
    assert classify_main([str(classes), "--model", str(tiny_clip_dir), "--adapter", str(posapl_dir),
                          "--output", str(output)]) == 0  # fmt: skip
    result = json.loads(output.read_text())["results"][0]
    assert {"base", "adapted"} <= set(result) and ("retention_top1" in result) == (result["base"]["top1"] > 0)
    audit = [str(synthetic_dir), "--output_dir", str(tmp_path / "audit"), "--grid_pairs", "0"]
    assert audit_main([*audit, "--model", str(tiny_clip_dir), "--adapter", str(posapl_dir)]) == 0
    settings = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert str(posapl_dir.resolve()) in json.dumps(settings)


def test_a_missing_tagger_is_one_line_naming_the_file_it_needs(
    posapl_dir, tiny_clip_dir, images, tmp_path, capsys, monkeypatch
):
    moved = tmp_path / "adapter"
    shutil.copytree(posapl_dir, moved)
    record = json.loads((moved / "text_inputs.json").read_text())
    gone = str(tmp_path / "elsewhere" / "tagger.pt")
    record["options"]["pos_model"] = gone
    (moved / "text_inputs.json").write_text(json.dumps(record))
    monkeypatch.delenv("RSITR_POS_MODEL", raising=False)
    arguments = ["index", str(images), "--index", str(tmp_path / "index"), "--model", str(tiny_clip_dir)]
    assert_one_line_error(capsys, search_main([*arguments, "--adapter", str(moved)]), gone, "RSITR_POS_MODEL")
    assert not (tmp_path / "index").exists()
    # a copy of the same tagger named by RSITR_POS_MODEL is taken; another tagger is not
    copy = tmp_path / "copy.pt"
    shutil.copy(json.loads((posapl_dir / "text_inputs.json").read_text())["options"]["pos_model"], copy)
    monkeypatch.setenv("RSITR_POS_MODEL", str(copy))
    assert RetrievalModel(tiny_clip_dir, moved, device="cpu").text_inputs.pos_model == str(copy)
    copy.write_bytes(copy.read_bytes() + b"changed")
    assert_one_line_error(capsys, search_main([*arguments, "--adapter", str(moved)]), "SHA-256")


def test_an_adapter_tagged_by_stanzas_model_is_not_tagged_by_another(
    posapl_dir, tiny_clip_dir, images, tmp_path, capsys, monkeypatch, stanza_tagger_path
):
    """An adapter trained with stanza's English model (its record names no tagger file) needs that model:
    ``$RSITR_POS_MODEL`` naming another tagger does not stand in for it."""
    stanza_trained = tmp_path / "adapter"
    shutil.copytree(posapl_dir, stanza_trained)
    record = json.loads((stanza_trained / "text_inputs.json").read_text())
    record["options"]["pos_model"], record["pos_model_sha256"] = None, None
    (stanza_trained / "text_inputs.json").write_text(json.dumps(record))
    monkeypatch.setenv("RSITR_POS_MODEL", str(stanza_tagger_path))
    monkeypatch.setenv("RSITR_CACHE", str(tmp_path / "cache"))  # no tags of that model cached
    arguments = ["index", str(images), "--index", str(tmp_path / "index"), "--model", str(tiny_clip_dir)]
    status = search_main([*arguments, "--adapter", str(stanza_trained)])
    assert_one_line_error(capsys, status, "stanza.download('en', processors='tokenize,pos')")
