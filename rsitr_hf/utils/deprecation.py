"""What rsitr_hf 0.1 users wrote works until ``REMOVED_IN``, with a ``FutureWarning`` naming the new form.

Module paths: rsitr_hf 0.1 kept most modules side by side at the top of the package; they now live in the
package of their layer. ``MOVED_MODULES`` maps each old path to the new one, and :class:`MovedModuleFinder`
(installed by ``import rsitr_hf``) answers an import of an old path, or of anything below it, with the new
module itself (the same object, so its functions, classes and globals are the new ones), after the warning.
``python -m <old path>`` runs the new module too. (The ``--kebab-case`` flags of 0.1 are the other
deprecation; :mod:`rsitr_hf.utils.cli` handles them.)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.2"
MOVED_MODULES = {
    "rsitr_hf.errors": "rsitr_hf.utils.errors",
    "rsitr_hf.files": "rsitr_hf.utils.files",
    "rsitr_hf.cli": "rsitr_hf.utils.cli",
    "rsitr_hf.distributed": "rsitr_hf.utils.distributed",
    "rsitr_hf.baselines": "rsitr_hf.tuners.baselines",
    "rsitr_hf.losses": "rsitr_hf.objectives.losses",
    "rsitr_hf.views": "rsitr_hf.objectives.views",
    "rsitr_hf.recipe": "rsitr_hf.training.recipe",
    "rsitr_hf.train": "rsitr_hf.training",
    "rsitr_hf.checkpoints": "rsitr_hf.training.checkpoints",
    "rsitr_hf.hub": "rsitr_hf.training.hub",
    "rsitr_hf.plots": "rsitr_hf.training.plots",
    "rsitr_hf.ann": "rsitr_hf.search.ann",
    "rsitr_hf.app": "rsitr_hf.search.app",
    "rsitr_hf.visualize": "rsitr_hf.search.visualize",
    "rsitr_hf.demo_readme": "rsitr_hf.demo.readme",
    "rsitr_hf.pretrain": "rsitr_hf.demo.pretrain",
    "rsitr_hf.tiny_clip": "rsitr_hf.demo.tiny_clip",
    "rsitr_hf.data.synthetic": "rsitr_hf.demo.synthetic",
    "rsitr_hf.convert": "rsitr_hf.tools.convert",
    "rsitr_hf.petl_benchmark": "rsitr_hf.tools.petl",
    "rsitr_hf.evaluation.ucm_ties": "rsitr_hf.tools.ucm_ties",
}


def new_path(name: str) -> str | None:
    """Where the module ``name`` lives now (``None``: it did not move): a moved module, or one below it."""
    for old, new in MOVED_MODULES.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


def warn_moved(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path works until rsitr_hf {REMOVED_IN}", FutureWarning, stacklevel=3
    )


class MovedModuleLoader(importlib.abc.Loader):
    """Loads an old path as the module at its new path (imported, or already in ``sys.modules``)."""

    def __init__(self, new: str):
        self.new = new
        self.spec = None

    def create_module(self, spec):
        warn_moved(spec.name, self.new)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import system set the old path's spec on the shared module

    def get_code(self, name: str):
        """For ``python -m <old path>`` (runpy asks the loader for the code it runs as ``__main__``): code
        that runs the new module as ``__main__`` under its own name, so that its relative imports resolve."""
        warn_moved(name, self.new)
        run = f"import runpy\nrunpy.run_module({self.new!r}, run_name='__main__', alter_sys=True)"
        return compile(run, name, "exec")


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the moved modules of ``MOVED_MODULES`` (and the modules below them) under their old paths."""

    def find_spec(self, name: str, path=None, target=None):
        new = new_path(name)
        if new is None:
            return None
        found = importlib.util.find_spec(new)
        if found is None:
            return None
        is_package = found.submodule_search_locations is not None
        loader = MovedModuleLoader(new)
        return importlib.util.spec_from_loader(name, loader, origin=found.origin, is_package=is_package)


def install_moved_module_finder() -> None:
    """Put :class:`MovedModuleFinder` first on ``sys.meta_path`` (once): an old path below a moved package
    must not be found as a second copy of the module by the ordinary finders."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
