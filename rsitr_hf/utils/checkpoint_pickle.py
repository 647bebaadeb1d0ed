"""Checkpoints as training scripts save them, read as plain data without running anything in the file.

``torch.load(weights_only=True)`` reads tensors, numbers and containers, and refuses everything else. What
research code pickles beside its weights is more varied, and harmless: HarMA's release saves
``{"model": state_dict, "config": config}`` where ``config`` is what ``ruamel.yaml``'s ``YAML().load``
returned (``CommentedMap``, ``CommentedSeq``, ``ScalarFloat`` and their comment and format records);
others save an ``argparse.Namespace``, numpy scalars, the epoch and the optimizer's state. :func:`read`
unpickles torch's zip format with Python's own unpickler, restricted to an allow-list of globals
(:data:`ALLOWED`) that become plain Python values: ruamel's mappings, sequences and scalars become ``dict``,
``list``, ``float``, ``int``, ``bool`` and ``str`` (its comments and formats are dropped; ruamel need not be
installed: nothing is imported by name from the file), a ``Namespace`` becomes a ``dict``, numpy scalars and
arrays Python numbers and lists, tensors tensors. Any other global is refused, naming it, before anything is
built from it. Files in torch's legacy format (before torch 1.6, not a zip) are read by
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, first_line

STORAGES = {  # torch's legacy storage classes, as torch.save names a tensor's storage
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


class StandIn:
    """What an object of an allowed class is unpickled into; :meth:`plain` is the value it stands for. Its
    pickled state (ruamel's comments and formats) is dropped."""

    def __setstate__(self, state: Any) -> None:
        pass

    def plain(self) -> Any:
        return None


class Mapping(StandIn, dict):
    """A ``dict`` subclass (ruamel's ``CommentedMap``): its items."""

    def plain(self) -> dict:
        return dict(self)


class Sequence(StandIn, list):
    """A ``list`` subclass (ruamel's ``CommentedSeq``): its items."""

    def plain(self) -> list:
        return list(self)


def scalar(base: type, value: type | None = None) -> type:
    """A stand-in for a subclass of ``base`` (ruamel's ``ScalarFloat``, ``ScalarInt``...): its ``value``
    (``base`` by default) of the number or string."""
    return type(
        f"Scalar{base.__name__.title()}", (StandIn, base), {"plain": lambda self: (value or base)(self)}
    )


class Namespace(StandIn):
    """``argparse.Namespace``: its attributes, as a ``dict``."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state or {})

    def plain(self) -> dict:
        return getattr(self, "attributes", {})


class NumpyArray(StandIn):
    """``numpy.core.multiarray._reconstruct``: a numpy array of numbers, as a nested ``list``."""

    def __init__(self, *_: Any):
        self.array: list = []

    def __setstate__(self, state: Any) -> None:
        _, shape, dtype, fortran, data = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
            raise pickle.UnpicklingError("a numpy array of objects")
        order = "F" if fortran else "C"
        self.array = np.frombuffer(data, dtype=dtype).reshape(shape, order=order).tolist()

    def plain(self) -> list:
        return self.array


def numpy_scalar(dtype: np.dtype, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: the Python number it holds."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar of an object")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode``, as protocol 2 pickles ``bytes`` (numpy's scalar data): latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def numpy_dtype(name: str, align: bool = False, copy: bool = False) -> np.dtype:
    return np.dtype(name, align=align, copy=copy)


def tensor_from_storage(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``: the tensor viewing ``storage`` (a flat tensor of its dtype)."""
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def parameter_data(data: torch.Tensor, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter``: the parameter's tensor."""
    return data


RUAMEL_SCALARS = {
    "ruamel.yaml.scalarfloat": dict.fromkeys(
        ("ScalarFloat", "ExponentialFloat", "ExponentialCapsFloat"), float
    ),
    "ruamel.yaml.scalarint": dict.fromkeys(
        ("ScalarInt", "BinaryInt", "OctalInt", "HexInt", "HexCapsInt", "DecimalInt"), int
    ),
    "ruamel.yaml.scalarstring": dict.fromkeys(
        (
            "ScalarString",
            "LiteralScalarString",
            "FoldedScalarString",
            "SingleQuotedScalarString",
            "DoubleQuotedScalarString",
            "PlainScalarString",
        ),
        str,
    ),
}
RUAMEL_DROPPED = {  # comments, formats, positions, anchors and tags
    "ruamel.yaml.comments": ("Comment", "Format", "LineCol", "Tag"),
    "ruamel.yaml.anchor": ("Anchor",),
    "ruamel.yaml.tokens": ("CommentToken",),
    "ruamel.yaml.error": ("CommentMark", "StreamMark", "FileMark", "StringMark"),
}
UNREADABLE = (  # what a damaged or hostile pickle raises while it is read
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    AttributeError,
    EOFError,
    IndexError,
    KeyError,
    RuntimeError,
    TypeError,
    ValueError,
)
NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): latin1_bytes,
    **{
        (module, name): kind
        for module in ("builtins", "__builtin__")
        for name, kind in (("set", set), ("frozenset", frozenset))
    },
    ("torch._utils", "_rebuild_tensor_v2"): tensor_from_storage,
    ("torch._utils", "_rebuild_parameter"): parameter_data,
    ("torch._utils", "_rebuild_parameter_with_state"): parameter_data,
    **{("torch", name): dtype for name, dtype in STORAGES.items()},
    ("argparse", "Namespace"): Namespace,
    ("numpy", "dtype"): numpy_dtype,
    ("numpy", "ndarray"): NumpyArray,  # only ever an argument of _reconstruct
    **{(module, "scalar"): numpy_scalar for module in NUMPY_CORE},
    **{(module, "_reconstruct"): NumpyArray for module in NUMPY_CORE},
    ("ruamel.yaml.comments", "CommentedMap"): Mapping,
    ("ruamel.yaml.comments", "CommentedOrderedMap"): Mapping,
    ("ruamel.yaml.comments", "CommentedSeq"): Sequence,
    ("ruamel.yaml.scalarbool", "ScalarBoolean"): scalar(int, bool),
    **{
        (module, name): scalar(base)
        for module, names in RUAMEL_SCALARS.items()
        for name, base in names.items()
    },
    **{(module, name): StandIn for module, names in RUAMEL_DROPPED.items() for name in names},
}


class PlainUnpickler(pickle.Unpickler):
    """Python's unpickler, restricted to :data:`ALLOWED`, reading tensors' storages from the zip, each once
    (tensors viewing one storage share it, as with ``torch.load``)."""

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"the file names {module}.{name}, which is not plain data")
        return found

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"an unknown persistent id {str(pid)[:60]}")
        _, dtype, key, _, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"a storage of {dtype!r}")
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            self.storages[key] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        storage = self.storages[key]
        if storage.dtype != dtype or storage.numel() != numel:
            raise pickle.UnpicklingError(f"storage {key} holds {storage.numel()} values, not {numel} {dtype}")
        return storage


def plain(value: Any) -> Any:
    """``value`` with every stand-in replaced by the plain value it stands for."""
    if isinstance(value, StandIn):
        value = value.plain()
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    if isinstance(value, set | frozenset):
        return type(value)(plain(item) for item in value)
    return value


def read(path: str | Path) -> Any:
    """The object pickled in the checkpoint at ``path``, as plain data (see the module); a
    :class:`CheckpointError` naming the file and the reason for anything else."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file, or a legacy pickle holding more than tensors
            raise CheckpointError(
                f"{path}: cannot read the checkpoint as weights only ({first_line(error)})"
            ) from None
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(
                    f"{path}: a zip archive, but not a torch checkpoint (no single data.pkl)"
                )
            prefix = pickles[0].removesuffix("data.pkl")
            if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") != b"little":
                raise CheckpointError(
                    f"{path}: saved on a big-endian machine, which this reader does not support"
                )
            with archive.open(pickles[0]) as file:
                found = PlainUnpickler(file, archive, prefix).load()
    except UNREADABLE as error:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint as plain data ({first_line(error)})"
        ) from None
    return plain(found)
