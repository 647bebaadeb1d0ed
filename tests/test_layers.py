"""The package's layers: every import points down, none runs in a circle, methods stand alone, training loads
no search code, and the module paths of rsitr_hf 0.1 still import (with a warning)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rsitr_hf
from rsitr_hf.utils.deprecation import MOVED_MODULES

PACKAGE = Path(rsitr_hf.__file__).parent
LAYERS = ("utils", "tuners", "objectives", "data", "evaluation", "training", "search", "demo", "tools")


def module_files() -> dict[str, Path]:
    """``rsitr_hf.a.b`` -> its file, for every module of the package (a package as ``rsitr_hf.a``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The rsitr_hf modules that ``name`` imports, anywhere in its file (function bodies too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {candidate for candidate in candidates if candidate in modules and candidate != name}
    return found


def layer_of(name: str) -> int | None:
    """The layer of a module (``None`` for the package's face, ``rsitr_hf`` itself)."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else None


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    assert {name.split(".")[1] for name in module_files() if name != "rsitr_hf"} == set(LAYERS)


def test_imports_point_down_the_layers():
    """A module imports its own layer or those below it (``LAYERS`` is bottom first), never one above."""
    upward = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer_of(source) is not None and (layer_of(target) is None or layer_of(target) > layer_of(source))
    ]
    assert upward == []


def test_no_import_circle():
    """No module reaches itself through imports (a package's ``__init__`` hands names on: not followed)."""
    graph = import_graph()
    faces = {name for name, path in module_files().items() if path.name == "__init__.py"}

    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for target in graph[stack.pop()] - faces:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return seen

    assert [name for name in graph if name not in faces and name in reachable(name)] == []


def test_a_method_imports_no_other_method():
    """``tuners/<method>/`` uses the shared tuner code (base, registration, the method table) and itself."""
    methods = {path.parent.name for path in (PACKAGE / "tuners").glob("*/__init__.py")}
    crossing = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        if source.startswith("rsitr_hf.tuners.") and source.split(".")[2] in methods
        for target in targets
        if target.startswith("rsitr_hf.tuners.")
        and target.split(".")[2] in methods
        and target.split(".")[2] != source.split(".")[2]
    ]
    assert methods >= {"mrs_adapter", "pos_prompt", "bottleneck_adapter"} and crossing == []


def loaded_after(statement: str) -> set[str]:
    """The modules ``sys.modules`` holds after ``statement`` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_training_loop_loads_neither_search_faiss_gradio_nor_the_demo():
    loaded = loaded_after("import rsitr_hf.training; import rsitr_hf.training.loop")
    assert "rsitr_hf.training.loop" in loaded
    assert not {name for name in loaded if name.split(".")[0] in ("faiss", "gradio")}
    assert not {name for name in loaded if name.startswith(("rsitr_hf.search", "rsitr_hf.demo"))}


def test_importing_rsitr_hf_loads_only_the_methods():
    loaded = loaded_after("import rsitr_hf")
    assert {name.split(".")[1] for name in loaded if name.startswith("rsitr_hf.")} == {"tuners", "utils"}


def test_the_module_paths_of_0_1_import_the_moved_modules_with_a_warning():
    code = """
import importlib, json, warnings
import rsitr_hf
from rsitr_hf.utils.deprecation import MOVED_MODULES
found = {}
for old, new in MOVED_MODULES.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    found[old] = [module is importlib.import_module(new), module.__name__, [str(w.message) for w in caught]]
from rsitr_hf.recipe import load_recipe
from rsitr_hf.training.recipe import load_recipe as moved
found["same function"] = load_recipe is moved
found["attribute"] = rsitr_hf.losses.hmmc_loss is importlib.import_module("rsitr_hf.objectives").hmmc_loss
print(json.dumps(found))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for old, new in MOVED_MODULES.items():
        same, name, messages = found[old]
        assert same and name == new, old
        assert any(f"{old} moved to {new}" in message for message in messages), (old, messages)
    assert found["same function"] and found["attribute"]


@pytest.mark.parametrize("old", ["rsitr_hf.train", "rsitr_hf.evaluation.ucm_ties"])
def test_python_m_with_a_module_path_of_0_1_runs_the_moved_command(old):
    result = subprocess.run(
        [sys.executable, "-m", old, "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout and f"{old} moved to {MOVED_MODULES[old]}" in result.stderr
