"""rsitr-search (index, incremental update, text/image queries, model identity) and rsitr-visualize."""

import errno
import io
import json
import pathlib
import shutil
import subprocess
import sys
import zlib

import PIL.Image
import pytest
import torch
from conftest import (
    HANG_TIMEOUT,
    TWO_PROCESS_LAUNCH,
    index_embeddings,
    index_files,
    interrupted_embedding,
    subprocess_env,
)
from peft import get_peft_model
from transformers import CLIPModel

from rsitr_hf import MRSAdapterConfig
from rsitr_hf.data import load_rsitr
from rsitr_hf.demo.synthetic import vocabulary
from rsitr_hf.demo.tiny_clip import save_tiny_clip
from rsitr_hf.evaluation.grids import plot_retrieval_grid, split_examples
from rsitr_hf.search import (
    ImageIndex,
    RetrievalModel,
    SearchError,
    build_index,
    list_images,
    main,
    read_image,
    search_captions,
    search_images,
)
from rsitr_hf.search.visualize import main as visualize_main


@pytest.fixture
def image_folder(tmp_path, synthetic_dir):
    """12 test images of the synthetic set: 8 at the top, 4 in a sub-folder, one as PNG."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    images = sorted((synthetic_dir / "synthrs_images").glob("test_*.tif"))
    for number, path in enumerate(images):
        shutil.copy(path, folder / ("more" if number >= 8 else "") / path.name)
    read_image(images[0]).save(folder / "more" / "copy.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_clip_dir):
    model = get_peft_model(
        CLIPModel.from_pretrained(tiny_clip_dir), MRSAdapterConfig(bottleneck_dim=8, shared_dim=4)
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.base_model.mrs_adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_index_embeds_recursively_and_updates_incrementally(
    tmp_path, image_folder, tiny_clip_dir, adapter_dir
):
    model = RetrievalModel(tiny_clip_dir, adapter_dir)
    update = build_index(image_folder, tmp_path / "index", model, batch_size=5)
    files = list_images(image_folder)
    assert len(files) == 13 and "more/copy.png" in files and "notes.txt" not in files
    assert update.added == files and update.total == 13
    index = ImageIndex.load(tmp_path / "index")
    assert index_files(index) == files and index_embeddings(index).shape == (13, 24)
    direct = model.embed_images([read_image(image_folder / name) for name in files])
    torch.testing.assert_close(index_embeddings(index), direct, rtol=0, atol=1e-6)  # batching does not matter

    embedded = []
    original = RetrievalModel.embed_images
    model.embed_images = lambda images: embedded.append(len(images)) or original(model, images)
    assert build_index(image_folder, tmp_path / "index", model).added == []
    assert embedded == []
    shutil.copy(image_folder / files[0], image_folder / "more" / "new_a.tif")
    shutil.copy(image_folder / files[1], image_folder / "new_b.tif")
    (image_folder / files[2]).unlink()
    update = build_index(image_folder, tmp_path / "index", model)
    assert sorted(update.added) == ["more/new_a.tif", "new_b.tif"] and update.removed == [files[2]]
    assert sum(embedded) == 2  # only the new images were embedded
    updated = ImageIndex.load(tmp_path / "index")
    assert index_files(updated) == [f for f in files if f != files[2]] + ["more/new_a.tif", "new_b.tif"]
    torch.testing.assert_close(
        index_embeddings(updated)[:12],
        index_embeddings(index)[[i for i in range(13) if i != 2]],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(index_embeddings(updated)[12], index_embeddings(index)[0], rtol=0, atol=1e-6)


def test_text_and_image_queries_rank_by_cosine(
    tmp_path, image_folder, tiny_clip_dir, synthetic_dir, capsys, monkeypatch
):
    model = RetrievalModel(tiny_clip_dir)
    build_index(image_folder, tmp_path / "index", model)
    index = ImageIndex.load(tmp_path / "index")
    query = "a dense residential area next to a river"
    hits = search_images(index, model, [query], k=4)[0]
    cosine = (model.embed_texts([query]) @ index_embeddings(index).T)[0]
    best = cosine.argsort(descending=True)[:4]
    assert [hit.item for hit in hits] == [index_files(index)[i] for i in best]
    assert [hit.score for hit in hits] == pytest.approx(cosine[best].tolist(), abs=1e-6)
    assert [hit.rank for hit in hits] == [1, 2, 3, 4]

    assert main(["query", "--index", str(tmp_path / "index"), "--text", query, "--text", "planes",
                 "--top_k", "3", "--json", str(tmp_path / "out.json")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"query: {query}" in printed and hits[0].item in printed
    results = json.loads((tmp_path / "out.json").read_text())
    assert [r["query"] for r in results] == [query, "planes"]
    assert results[0]["hits"][0] == {
        "rank": 1,
        "score": pytest.approx(hits[0].score),
        "path": str(image_folder / hits[0].item),
    }

    written = pathlib.Path.write_text

    def disk_full_halfway(self, text, *args, **kwargs):
        written(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(pathlib.Path, "write_text", disk_full_halfway)
        assert main(["query", "--index", str(tmp_path / "index"), "--text", "planes",
                     "--json", str(tmp_path / "out.json")]) == 2  # fmt: skip
    printed = capsys.readouterr().err
    assert printed.endswith(f"{tmp_path / 'out.json'}: cannot write it (No space left on device)\n")
    assert "Traceback" not in printed and json.loads((tmp_path / "out.json").read_text()) == results
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]

    captions_file = synthetic_dir / "test_caps.txt"
    image = image_folder / index_files(index)[0]
    found = search_captions(model, image, captions_file.read_text().splitlines(), k=5)
    distinct = list(
        dict.fromkeys(line.strip() for line in captions_file.read_text().splitlines() if line.strip())
    )
    scores = (model.embed_images([read_image(image)]) @ model.embed_texts(distinct).T)[0]
    assert [hit.item for hit in found] == [distinct[i] for i in scores.argsort(descending=True)[:5]]
    assert main(["query", "--index", str(tmp_path / "index"), "--image", str(image), "--captions",
                 str(captions_file), "--json", "-"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)[0]["hits"][0]["caption"] == found[0].item

    # image -> images: the nearest indexed images by cosine, the query image itself first
    probe = image_folder / index_files(index)[-1]  # not the image that more/copy.png duplicates
    assert main(["query", "--index", str(tmp_path / "index"), "--image", str(probe), "--top_k", "3",
                 "--json", "-"]) == 0  # fmt: skip
    nearest = [hit["path"] for hit in json.loads(capsys.readouterr().out)[0]["hits"]]
    cosine = (model.embed_images([read_image(probe)]) @ index_embeddings(index).T)[0]
    assert nearest == [str(image_folder / index_files(index)[i]) for i in cosine.argsort(descending=True)[:3]]
    assert nearest[0] == str(probe)


def test_an_index_refuses_another_model(tmp_path, image_folder, tiny_clip_dir, adapter_dir, capsys):
    build_index(image_folder, tmp_path / "index", RetrievalModel(tiny_clip_dir, adapter_dir))
    other_base = save_tiny_clip(tmp_path / "other", vocabulary(), seed=1)
    with pytest.raises(SearchError, match="was built with .* not with"):
        build_index(image_folder, tmp_path / "index", RetrievalModel(other_base))
    assert (
        main(["query", "--index", str(tmp_path / "index"), "--text", "x", "--model", str(tiny_clip_dir)]) == 2
    )
    assert "(no adapter)" in capsys.readouterr().err
    # the same names with other weights: the fingerprint tells them apart
    model = get_peft_model(
        CLIPModel.from_pretrained(tiny_clip_dir), MRSAdapterConfig(bottleneck_dim=8, shared_dim=4)
    )
    changed = tmp_path / "adapter_copy"
    shutil.copytree(adapter_dir, changed)
    build_index(image_folder, tmp_path / "index2", RetrievalModel(tiny_clip_dir, changed))
    model.save_pretrained(changed)  # zero-initialised: another adapter under the same folder name
    with pytest.raises(SearchError, match="same names, other weights"):
        build_index(image_folder, tmp_path / "index2", RetrievalModel(tiny_clip_dir, changed))
    assert main(["query", "--index", str(tmp_path / "index2"), "--text", "x"]) == 2


def test_unreadable_image_is_named(tmp_path, image_folder, tiny_clip_dir):
    (image_folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SearchError, match="broken.png: not a readable image"):
        build_index(image_folder, tmp_path / "index", RetrievalModel(tiny_clip_dir))


def decompression_bomb(side: int = 60_000) -> bytes:
    """A PNG whose header claims ``side`` x ``side`` pixels (its data holds one)."""
    buffer = io.BytesIO()
    PIL.Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = side.to_bytes(4, "big") * 2  # IHDR's width and height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_a_decompression_bomb_is_an_unreadable_image_named_in_one_line(tmp_path, image_folder, tiny_clip_dir):
    (image_folder / "bomb.png").write_bytes(decompression_bomb())
    with pytest.raises(
        SearchError, match=r"bomb\.png: not a readable image \(Image size \(3600000000 pixels\)"
    ) as error:
        build_index(image_folder, tmp_path / "index", RetrievalModel(tiny_clip_dir))
    assert "\n" not in str(error.value) and not (tmp_path / "index" / "manifest.json").exists()


def test_the_base_alone_takes_clip_tokens(tiny_clip_dir):
    from rsitr_hf.data.text_inputs import TextInputs

    model = RetrievalModel(tiny_clip_dir)
    assert model.method is None and type(model.text_inputs) is TextInputs


def test_grids_from_an_index_and_from_a_split(tmp_path, synthetic_dir, tiny_clip_dir, image_folder):
    index_dir = tmp_path / "index"
    build_index(synthetic_dir / "synthrs_images", index_dir, RetrievalModel(tiny_clip_dir))
    out = tmp_path / "grid.png"
    assert visualize_main(["--index", str(index_dir), "--data", str(synthetic_dir), "--num_queries", "3",
                           "--top_k", "4", "--out", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[:4] == b"\x89PNG"

    split = load_rsitr(synthetic_dir, validation_fraction=0.0)["test"]
    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), RetrievalModel(tiny_clip_dir).processor
    rows = split_examples(model, split, processor, num_queries=3, top_k=4)
    assert [row.query for row in rows] == [split[i]["captions"][0] for i in (0, 6, 11)]
    for row, image_row in zip(rows, (0, 6, 11), strict=True):
        assert row.scores == sorted(row.scores, reverse=True) and len(row.images) == 4
        truth_in_top = [i for i, truth in enumerate(row.is_ground_truth) if truth]
        assert len(truth_in_top) <= 1
        for position in truth_in_top:
            assert list(row.images[position].getdata()) == list(split[image_row]["image"].getdata())
    assert plot_retrieval_grid(rows, tmp_path / "rows.png").read_bytes()[:4] == b"\x89PNG"


def test_an_interrupted_index_keeps_its_work(tmp_path, image_folder, tiny_clip_dir, monkeypatch):
    import rsitr_hf.search.update

    monkeypatch.setattr(rsitr_hf.search.update, "SAVE_EVERY_SECONDS", 0)
    model = RetrievalModel(tiny_clip_dir)
    restore = interrupted_embedding(model, after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        build_index(image_folder, tmp_path / "index", model, batch_size=4)
    partial = ImageIndex.load(tmp_path / "index")
    assert index_files(partial) == list_images(image_folder)[:8] and index_embeddings(partial).shape[0] == 8
    restore()
    update = build_index(image_folder, tmp_path / "index", model, batch_size=4)
    assert update.added == list_images(image_folder)[8:] and update.total == 13


def test_a_two_process_sharded_index_equals_the_one_process_index(tmp_path, image_folder, tiny_clip_dir):
    """``accelerate launch -m rsitr_hf.search index``: two gloo processes, 13 images in batches of 3 (five
    batches: the last round has one), merged into the index a one-process run writes."""
    folder, model = str(image_folder), str(tiny_clip_dir)
    arguments = ["index", folder, "--model", model, "--batch_size", "3", "--ann", "flat"]
    assert main([*arguments, "--index", str(tmp_path / "single")]) == 0
    launch = [sys.executable, *TWO_PROCESS_LAUNCH, "-m", "rsitr_hf.search", *arguments]

    def sharded_build(index_dir):
        return subprocess.run(
            [*launch, "--index", index_dir],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=HANG_TIMEOUT,
        )

    result = sharded_build(str(tmp_path / "sharded"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("13 images (13 embedded now, 0 gone; FAISS index: built Flat)") == 1
    single, sharded = ImageIndex.load(tmp_path / "single"), ImageIndex.load(tmp_path / "sharded")
    assert index_files(sharded) == index_files(single) == list_images(image_folder)
    assert sharded.table()["row_id"].equals(single.table()["row_id"])  # row for row, id for id
    assert sharded.root == single.root and sharded.model.matches(single.model)  # within float tolerance
    torch.testing.assert_close(index_embeddings(sharded), index_embeddings(single), rtol=0, atol=1e-5)
    assert len(sharded.ann) == 13
    # each process wrote its own shard of its contiguous share (5 batches of 3: 3 and 2); the main
    # process committed the manifest naming both
    ranges = [(shard.entry.first_id, shard.entry.end_id) for shard in sharded.shards]
    assert ranges == [(0, 9), (9, 13)] and [len(shard.entry.checksums) for shard in sharded.shards] == [2, 2]

    # an unreadable image met by one process stops both, with the file named and no traceback
    (image_folder / "zz_broken.jpg").write_bytes(b"not a jpeg")
    result = sharded_build(str(tmp_path / "broken"))
    assert result.returncode != 0
    assert "error: " + str(image_folder / "zz_broken.jpg") + ": not a readable image" in result.stderr
    assert "rsitr_hf/search/" not in result.stderr  # only the launcher's own traceback
