"""Registration of the rsitr_hf methods with peft: idempotent, a clear error where peft's enum changes, a
clear error where an adapter is loaded without ``import rsitr_hf``, and the oldest peft the project allows."""

import configparser
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import peft
import pytest
from conftest import HANG_TIMEOUT, ROOT, run_in_fresh_process, subprocess_env
from peft import PeftModel, get_peft_model
from peft.utils import PeftType
from transformers import CLIPModel

import rsitr_hf
from rsitr_hf import MRSAdapterConfig
from rsitr_hf.tuners.registration import RegistrationError, add_peft_type

SMALL = {"bottleneck_dim": 16, "shared_dim": 8}


def test_registration_is_idempotent():
    importlib.reload(rsitr_hf.tuners.mrs_adapter)
    assert PeftType.MRS_ADAPTER.value == "MRS_ADAPTER"
    assert MRSAdapterConfig().peft_type is PeftType.MRS_ADAPTER
    assert list(PeftType).count(PeftType.MRS_ADAPTER) == 1


def test_a_changed_enum_layout_is_a_clear_error_naming_the_peft_version(monkeypatch):
    monkeypatch.delattr(PeftType, "_value2member_map_")
    with pytest.raises(RegistrationError, match=rf"peft {re.escape(peft.__version__)}: PeftType has no"):
        add_peft_type("NOT_YET_REGISTERED")
    assert "NOT_YET_REGISTERED" not in PeftType.__members__


def test_loading_without_import_says_import_rsitr_hf_first(tiny_clip_dir, tmp_path):
    get_peft_model(CLIPModel.from_pretrained(tiny_clip_dir), MRSAdapterConfig(**SMALL)).save_pretrained(
        tmp_path
    )
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MRS_ADAPTER (import rsitr_hf first)"
    source = (
        "import sys\nfrom peft import PeftModel\nfrom transformers import CLIPModel\n"
        "PeftModel.from_pretrained(CLIPModel.from_pretrained(sys.argv[1]), sys.argv[2])\n"
    )
    result = run_in_fresh_process(tmp_path, source, tiny_clip_dir, tmp_path)
    assert result.returncode != 0
    assert "KeyError: 'MRS_ADAPTER (import rsitr_hf first)'" in result.stderr


def test_configs_saved_with_the_bare_type_name_still_load(tiny_clip_dir, tmp_path):
    get_peft_model(CLIPModel.from_pretrained(tiny_clip_dir), MRSAdapterConfig(**SMALL)).save_pretrained(
        tmp_path
    )
    config_path = tmp_path / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "peft_type": "MRS_ADAPTER"}))
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path)
    assert loaded.peft_config["default"].peft_type is PeftType.MRS_ADAPTER


def oldest_allowed(package: str) -> str:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    for requirement in setup["options"]["install_requires"].split():
        if requirement.startswith(f"{package}>="):
            return requirement.split(">=")[1]
    raise AssertionError(f"setup.cfg pins no lower bound for {package}")


CONTRACT_SCRIPT = """
import sys, tempfile
import peft, torch
from packaging.version import Version
from peft import PeftModel, get_peft_model
from transformers import CLIPModel
import rsitr_hf

assert Version(peft.__version__) == Version(sys.argv[2]), peft.__version__
configs = [
    rsitr_hf.MRSAdapterConfig(bottleneck_dim=16, shared_dim=8),
    rsitr_hf.BottleneckAdapterConfig(bottleneck_dim=8),
    rsitr_hf.POSPromptConfig(adapter_dim=16, adapter_heads=2, fusion_layers=[1, 1, 2, 2]),
]
for config in configs:
    model = get_peft_model(CLIPModel.from_pretrained(sys.argv[1]), config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)
    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(sys.argv[1]), folder)
    saved = {k: v for k, v in model.state_dict().items() if model.base_model.prefix in k}
    reloaded = loaded.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in saved.items()), type(config).__name__
print("ok", len(configs))
"""


def test_the_oldest_allowed_peft_registers_saves_and_loads(tiny_clip_dir, tmp_path):
    """The newest peft is what the test environment installs; this installs the lower bound of setup.cfg
    beside it and runs the round trip of every method there."""
    version = oldest_allowed("peft")
    target = tmp_path / "oldest_peft"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            f"peft=={version}",
        ],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        pytest.skip(f"could not install peft=={version} from the package registry: {install.stderr[-300:]}")
    script = tmp_path / "contract.py"
    script.write_text(CONTRACT_SCRIPT)
    environment = subprocess_env()
    environment["PYTHONPATH"] = f"{target}:{environment['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_clip_dir), version],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=HANG_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "3"]
    assert Path(target / "peft").is_dir()
