import json
import os
import subprocess
import sys

from transformers import CLIPModel, CLIPProcessor

from rsitr_hf.demo.synthetic import vocabulary
from rsitr_hf.demo.tiny_clip import build_word_tokenizer

DUMP_VOCAB = (
    "import json; from rsitr_hf.demo.tiny_clip import build_word_tokenizer; "
    "from rsitr_hf.demo.synthetic import vocabulary; "
    "print(json.dumps(sorted(build_word_tokenizer(vocabulary()).get_vocab().items())))"
)


def test_every_word_is_one_token_and_other_text_still_encodes():
    tokenizer = build_word_tokenizer(vocabulary())
    for word in vocabulary():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    ids = tokenizer("An Unseen-word!")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "an unseen - word !"


def test_tokenizer_is_identical_across_processes_and_hash_seeds():
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", DUMP_VOCAB], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]


def test_saved_directory_loads_like_a_hub_checkpoint(tiny_clip_dir):
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    assert model.config.text_config.hidden_size != model.config.vision_config.hidden_size
    assert model.config.text_config.eos_token_id == processor.tokenizer.eos_token_id
    assert processor.tokenizer.model_max_length == 77
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}
