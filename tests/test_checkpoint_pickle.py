"""Checkpoints as training scripts save them are read as plain data, and nothing else is: HarMA's
``{"model", "config"}`` with ruamel.yaml's objects (read without ruamel), open_clip's training checkpoints
with their epoch, name, optimizer state, argparse Namespace and numpy values; a pickle that would run code
is refused naming the file and the global, and runs nothing."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ruamel.yaml import YAML

from rsitr_hf.tools.convert import main as convert_main
from rsitr_hf.utils.checkpoint_pickle import read
from rsitr_hf.utils.errors import CheckpointError

CONFIG = """
model: 'vit'  # comments and quoting are ruamel's, not the values'
lr: 4e-4
weight_decay: 0.04
epochs: 50
use_affil_loss: False
optimizer: {opt: adamW, lr: 4e-4, betas: [0.9, 0.98]}
train_file: ['data/finetune/rsitmd_train.json', "data/finetune/rsicd_train.json"]
"""
PLAIN_CONFIG = {
    "model": "vit",
    "lr": 4e-4,
    "weight_decay": 0.04,
    "epochs": 50,
    "use_affil_loss": False,
    "optimizer": {"opt": "adamW", "lr": 4e-4, "betas": [0.9, 0.98]},
    "train_file": ["data/finetune/rsitmd_train.json", "data/finetune/rsicd_train.json"],
}


def kinds(value):
    """The exact types of a nested value, to tell ``float`` from a subclass of it."""
    if isinstance(value, dict):
        return {key: kinds(item) for key, item in value.items()}
    if isinstance(value, list):
        return [kinds(item) for item in value]
    return type(value).__name__


@pytest.fixture
def state():
    torch.manual_seed(0)
    weight = torch.randn(6, 4)
    return {
        "visual.proj": weight,
        "visual.proj_t": weight.t(),
        "half": torch.randn(3).half(),
        "step": torch.tensor(7),
    }


def test_harmas_release_checkpoint_reads_as_plain_data_without_ruamel(state, tmp_path):
    path = tmp_path / "checkpoint_best.pth"
    config = YAML().load(CONFIG)
    assert type(config["lr"]).__name__ == "ScalarFloat"  # what the release pickles
    torch.save({"model": state, "config": config}, path)
    found = read(path)
    assert found["config"] == PLAIN_CONFIG and kinds(found["config"]) == kinds(PLAIN_CONFIG)
    assert found["model"].keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(found["model"][key], tensor) and found["model"][key].dtype == tensor.dtype
    assert (
        found["model"]["visual.proj_t"].stride() == state["visual.proj_t"].stride()
    )  # a view of one storage
    shared = [found["model"][key].untyped_storage().data_ptr() for key in ("visual.proj", "visual.proj_t")]
    assert shared[0] == shared[1]  # read once, shared by both views (as torch.load does)
    code = (
        "import json, sys; sys.modules['ruamel'] = sys.modules['ruamel.yaml'] = None\n"
        "from rsitr_hf.utils.checkpoint_pickle import read\n"
        f"print(json.dumps(read({str(path)!r})['config']))"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(printed) == PLAIN_CONFIG


def test_an_open_clip_training_checkpoint_reads_with_its_optimizer_and_arguments(state, tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    arguments = argparse.Namespace(model="ViT-B-32", lr=1e-3, precision="amp", workers=4, seed=0)
    saved = {
        "epoch": 3,
        "name": "rsitmd-finetune",
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "args": arguments,
        "best_recall": np.float64(0.4375),
        "steps": np.int64(1200),
        "rng": np.arange(6, dtype=np.uint32).reshape(2, 3),
    }
    torch.save(saved, tmp_path / "epoch_3.pt")
    found = read(tmp_path / "epoch_3.pt")
    assert found["epoch"] == 3 and found["name"] == "rsitmd-finetune"
    assert found["args"] == vars(arguments)
    assert found["best_recall"] == 0.4375 and type(found["best_recall"]) is float
    assert found["steps"] == 1200 and type(found["steps"]) is int
    assert found["rng"] == [[0, 1, 2], [3, 4, 5]]
    expected = optimizer.state_dict()
    assert found["optimizer"]["param_groups"] == [
        {**group, "betas": tuple(group["betas"])} for group in expected["param_groups"]
    ]
    for index, moments in expected["state"].items():
        for name, tensor in moments.items():
            assert torch.equal(found["optimizer"]["state"][index][name], tensor), name
    for key, tensor in model.state_dict().items():
        assert torch.equal(found["state_dict"][key], tensor)


class RunsCode:
    """A pickle that calls ``os.system`` when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_naming_the_file_and_the_global(state, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pth"
    torch.save({"model": state, "config": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError) as refused:
        read(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "system, which is not plain data" in message
    assert "\n" not in message and not marker.exists()
    assert convert_main([str(path), str(tmp_path / "out"), "--bpe", "unused.txt.gz"]) == 2
    assert "which is not plain data" in capsys.readouterr().err and not marker.exists()


def test_a_damaged_checkpoint_is_one_line(state, tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"model": state}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"^.*cut\.pth: cannot read the checkpoint"):
        read(path)
