"""The package's layers: every import points down, none runs in a circle, methods stand alone, training loads
no search code."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import HANG_TIMEOUT

import rsitr_hf

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
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_TIMEOUT
    )
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


def test_the_training_step_imports_no_tuner():
    """The step calls the recipe's loss without knowing which it is (the loss table knows)."""
    assert not {target for target in import_graph()["rsitr_hf.training.step"] if ".tuners" in target}


def test_no_module_outside_a_method_compares_a_method_or_loss_name_with_a_string():
    """What depends on the method, its loss or its text inputs is read from their declarations: no module
    outside a method's own package (``tuners/<method>/``) compares a registered name with a string literal."""
    from rsitr_hf.data.text_inputs import TEXT_INPUTS
    from rsitr_hf.objectives.table import LOSSES
    from rsitr_hf.tuners.methods import METHODS

    names = set(METHODS) | set(LOSSES) | set(TEXT_INPUTS)
    methods = {path.parent.name for path in (PACKAGE / "tuners").glob("*/__init__.py")}
    found = []
    for name, path in module_files().items():
        parts = name.split(".")
        if parts[1:2] == ["tuners"] and len(parts) > 2 and parts[2] in methods:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            literals = set()
            for operand in (node.left, *node.comparators):
                items = operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand]
                literals |= {item.value for item in items if isinstance(item, ast.Constant)}
            found += [f"{name}:{node.lineno} {literal!r}" for literal in sorted(literals & names, key=str)]
    assert len(names) >= 9 and found == []
