import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_TIMEOUT, TWO_PROCESS_LAUNCH, subprocess_env
from torch.utils.data import DataLoader
from transformers import CLIPModel, CLIPProcessor

from rsitr_hf.data import load_rsitr
from rsitr_hf.data.pixels import DecodedPixels, cached_pixels
from rsitr_hf.data.preprocessing import RetrievalCollator, caption_pairs
from rsitr_hf.data.text_inputs import TextInputs
from rsitr_hf.evaluation import encode_split, evaluate_retrieval, retrieval_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_and_processor(tiny_clip_dir):
    return CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)


def test_collator_pads_to_the_longest_caption_and_gathers_uint8_pixels(synthetic_dir, model_and_processor):
    _, processor = model_and_processor
    train = load_rsitr(synthetic_dir)["train"]
    text_inputs = TextInputs(processor.tokenizer)
    pairs = caption_pairs(train, text_inputs)
    assert pairs.column_names == ["image_row", "image_id", "pair_index", "input_ids"]
    collator = RetrievalCollator(DecodedPixels(train, processor.image_processor), text_inputs)
    order = [7, 0, 13, 2, 5, 9]
    batch = next(iter(DataLoader(pairs.select(order), batch_size=6, collate_fn=collator)))
    lengths = [len(processor.tokenizer(train[i // 5]["captions"][i % 5])["input_ids"]) for i in order]
    assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (6, 3, 32, 32)
    images = DecodedPixels(train, processor.image_processor).take([i // 5 for i in order])
    assert torch.equal(batch["pixels"], torch.from_numpy(images))
    text = batch["text"]
    assert set(text) == {"input_ids", "attention_mask"} and text["input_ids"].shape == (6, max(lengths))
    assert text["attention_mask"].sum(dim=1).tolist() == lengths
    assert (text["input_ids"][text["attention_mask"] == 0] == processor.tokenizer.pad_token_id).all()
    padded = processor.tokenizer([train[i // 5]["captions"][i % 5] for i in order], padding="longest")
    assert text["input_ids"].tolist() == padded["input_ids"]  # as the tokenizer pads a batch itself
    assert batch["image_ids"].tolist() == [train[i // 5]["image_id"] for i in order]
    assert batch["pair_index"] == order


def test_encoding_distinct_captions_matches_encoding_every_caption(synthetic_dir, model_and_processor):
    model, processor = model_and_processor
    test = load_rsitr(synthetic_dir)["test"]
    # duplicate a caption across two images to exercise deduplication
    captions = [list(c) for c in test["captions"]]
    captions[1][0] = captions[0][0]
    test = test.remove_columns("captions").add_column("captions", captions)
    model.train()
    embeddings = encode_split(model, test, processor, batch_size=5)
    assert model.training  # mode restored
    flat = [c for row in captions for c in row]
    assert embeddings.text_embeds.shape[0] == len(set(flat)) < len(flat)
    with torch.no_grad():
        tokens = processor.tokenizer(flat, padding=True, return_tensors="pt")
        reference = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        pixels = processor.image_processor(images=list(test["image"]), return_tensors="pt")["pixel_values"]
        images = torch.nn.functional.normalize(
            model.get_image_features(pixel_values=pixels).pooler_output, dim=-1
        )
    torch.testing.assert_close(
        embeddings.text_embeds[embeddings.caption_text_index], reference, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(embeddings.image_embeds, images, atol=1e-5, rtol=0)
    assert embeddings.similarity().shape == (12, 60)
    expected = retrieval_metrics(images @ reference.T, embeddings.caption_image_ids, test["image_id"])
    assert evaluate_retrieval(model, test, processor, batch_size=7) == pytest.approx(expected)
    # the same from the image cache, and with decoding in two data-loader workers
    cached = cached_pixels(test, processor.image_processor)
    assert evaluate_retrieval(model, test, processor, batch_size=7, pixels=cached) == pytest.approx(expected)
    in_workers = encode_split(model, test, processor, batch_size=5, num_workers=2)
    torch.testing.assert_close(in_workers.image_embeds, embeddings.image_embeds, atol=0, rtol=0)


SCRIPT = """
import json, sys
from accelerate import Accelerator
from transformers import CLIPModel, CLIPProcessor
from rsitr_hf.data import load_rsitr
from rsitr_hf.evaluation import encode_split, retrieval_metrics
accelerator = Accelerator(cpu=True)
model = CLIPModel.from_pretrained(sys.argv[1]); processor = CLIPProcessor.from_pretrained(sys.argv[1])
test = load_rsitr(sys.argv[2])["test"]
e = encode_split(model, test, processor, batch_size=5, accelerator=accelerator)
if accelerator.is_main_process:
    out = {"metrics": retrieval_metrics(e.similarity(), e.caption_image_ids, e.image_ids),
           "images": e.image_embeds.shape[0], "texts": e.text_embeds.shape[0]}
    json.dump(out, open(sys.argv[3], "w"))
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group: no gloo thread left to abort at exit
"""


def test_two_process_encoding_equals_single_process(
    tmp_path, synthetic_dir, tiny_clip_dir, model_and_processor
):
    model, processor = model_and_processor
    test = load_rsitr(synthetic_dir)["test"]  # 12 images, 60 captions: shards of uneven batches
    single = encode_split(model, test, processor, batch_size=5)
    script = tmp_path / "encode.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.json"
    command = [
        sys.executable,
        *TWO_PROCESS_LAUNCH,
        str(script),
        str(tiny_clip_dir),
        str(synthetic_dir),
        str(out),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(), timeout=HANG_TIMEOUT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = json.loads(out.read_text())
    assert gathered["images"] == 12 and gathered["texts"] == single.text_embeds.shape[0]
    expected = retrieval_metrics(single.similarity(), single.caption_image_ids, single.image_ids)
    assert gathered["metrics"] == pytest.approx(expected, abs=1e-9)
