"""Configuration files as dataclasses: YAML mappings read into nested dataclasses with strict keys, checked
values, and one ``--section.field`` command-line option per field with its help.

A configuration is a dataclass whose fields are values or sections (dataclasses themselves). Every field is
declared with :func:`option`: its default, ``--help`` text, the range of numbers it accepts, and, for a
string whose values are registered at run time, a function giving them. :func:`build` reads a mapping into
the dataclass (an unknown key is an error naming its path, ``training.bach_size``); :func:`to_mapping`
writes it back. Values given on the command line are parsed once, as YAML (:func:`read_yaml`), and set
into the mapping (:func:`set_value`) before it is built.

A section may hold options that something chosen at run time declares (a loss's options, chosen by the
loss's name): its field declared with ``declared_by`` collects the section's other keys as a mapping,
which the program builds into the chosen entry's own options dataclass once it knows the entry
(:func:`build` with ``owner``); files and the command line write them flat in the section, and ``--help``
lists every entry's options.

Why not ``transformers.HfArgumentParser``: it flattens dataclasses into one namespace, where fields of the
same name in different sections would collide, and it has no nested sections, no key-path errors and no
YAML values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import InputError


class RecipeError(InputError, ValueError):
    """A configuration key or value is not what the schema expects; the message names the key path."""


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: ``low``/``high`` bounds (``None``: unbounded), each inclusive
    unless ``*_open``. A list field's range applies to each item."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (
            f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        )


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)

Choices = Callable[[], Mapping[str, str]]  # {value: what it is}
Declarations = Callable[[], Mapping[str, type]]  # {entry: its options dataclass}


def option(
    default=dataclasses.MISSING,
    help_text: str = "",
    valid: Range | None = None,
    choices: Choices | None = None,
    declared_by: Declarations | None = None,
    **kwargs,
):
    """A configuration field with its ``--help`` text (``metadata["help"]``, as transformers' dataclasses),
    the range of numbers it accepts, for a string whose values are registered at run time the function
    giving them (``choices``), and for a field that collects options declared elsewhere the function giving
    each entry's options dataclass (``declared_by``; see the module docstring)."""
    metadata = {"help": help_text, "range": valid, "choices": choices, "declared_by": declared_by}
    return field(default=default, metadata=metadata, **kwargs)


def declared_field(cls) -> dataclasses.Field | None:
    """The field of dataclass ``cls`` that collects declared options, if it has one."""
    return next((f for f in dataclasses.fields(cls) if f.metadata.get("declared_by")), None)


def coerce(value, annotation, path: str):
    """Check ``value`` against a field annotation (``int``, ``float | None``, ``list[float]``, ``dict``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for candidate in (o for o in options if o is not type(None)):
            try:
                return coerce(value, candidate, path)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0])
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise RecipeError(f"{path}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, f"{path}.")
    if annotation is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path}: expected a string, got {value!r}")
        return value
    raise RecipeError(f"{path}: unsupported field type {annotation}")


def check_choice(value, choices: Choices | None, path: str) -> None:
    """A :class:`RecipeError` naming ``path`` when ``value`` is not one of the registered ``choices``."""
    if choices is not None and value not in choices():
        raise RecipeError(f"{path}: expected one of {list(choices())}, got {value!r}")


def check_range(value, valid: Range | None, path: str) -> None:
    """A :class:`RecipeError` naming ``path`` when a number (or an item of a list) is outside ``valid``."""
    if valid is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, int | float) and not isinstance(item, bool) and item not in valid:
            raise RecipeError(f"{path}: expected a value {valid}, got {item!r}")


def build(cls, values: dict, prefix: str = "", owner: str | None = None):
    """Instantiate dataclass ``cls`` from a mapping, recursing into dataclass fields; strict keys (errors name
    the section, and ``owner``, the entry whose options ``cls`` are). Keys that are not fields go to the
    field declared with ``declared_by``, when ``cls`` has one, as a mapping."""
    section = prefix.rstrip(".") or "the recipe"
    if not isinstance(values, dict):
        raise RecipeError(f"{section}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    collector = declared_field(cls)
    own = set(fields) - {collector.name} if collector else set(fields)
    unknown = sorted(set(values) - own)
    if unknown and collector is None:
        of = f"{section} ({owner})" if owner else section
        known = ", ".join(sorted(own)) or "none"
        raise RecipeError(f"unknown key {prefix}{unknown[0]!s} (known keys of {of}: {known})")
    kwargs = {}
    for name, value in values.items():
        if name not in own:
            continue
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], value, f"{path}.")
        else:
            kwargs[name] = coerce(value, hints[name], path)
            check_range(kwargs[name], fields[name].metadata.get("range"), path)
            check_choice(kwargs[name], fields[name].metadata.get("choices"), path)
    if collector is not None:
        kwargs[collector.name] = {name: values[name] for name in unknown}
    return cls(**kwargs)


def to_mapping(instance) -> dict:
    """A configuration dataclass as the mapping :func:`build` reads (declared options flat in their
    section)."""
    values = {}
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        if item.metadata.get("declared_by"):
            values.update(to_mapping(value) if dataclasses.is_dataclass(value) else dict(value or {}))
        elif dataclasses.is_dataclass(value):
            values[item.name] = to_mapping(value)
        elif isinstance(value, list):
            values[item.name] = [to_mapping(v) if dataclasses.is_dataclass(v) else v for v in value]
        else:
            values[item.name] = value
    return values


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: ``true``/``false`` only, so ``no``, ``on`` and ``yes``
    are words (YAML 1.1 reads an unquoted ``no`` as false, which ``mixed_precision: no`` means as a word)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str):
    """YAML text (a file, or one command-line value) as Python values."""
    return yaml.load(text, Loader=RecipeLoader)


def read_mapping(path: str | os.PathLike) -> dict:
    """The YAML mapping in the file ``path`` (empty for an empty file)."""
    values = read_yaml(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: expected a YAML mapping")
    return values


def set_value(values: dict, dotted: str, value) -> None:
    """``values[a][b] = value`` for ``dotted = "a.b"`` (sections created as needed)."""
    keys = dotted.split(".")
    target = values
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise RecipeError(f"cannot override {dotted}: {key} is not a section")
    target[keys[-1]] = value


def type_name(annotation) -> str:
    """``int | None`` -> ``INT``, ``list[float]`` -> ``LIST``, ``Literal["a", "b"]`` -> ``a|b``: the metavar
    of an option."""
    options = [option for option in typing.get_args(annotation) if option is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return "|".join(type_name(option) for option in options)
    if typing.get_origin(annotation) is Literal:
        return "|".join(map(str, options))
    return getattr(typing.get_origin(annotation) or annotation, "__name__", str(annotation)).upper()


def default_of(item: dataclasses.Field):
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


def field_help(item: dataclasses.Field) -> str:
    """A field's ``--help`` text: its help, its choices, its range and its default."""
    help_text = item.metadata.get("help", "")
    choices = item.metadata.get("choices")
    if choices is not None:
        help_text += ": " + " | ".join(f"{value} ({what})" for value, what in choices().items())
    if item.metadata.get("range") is not None:
        help_text += f"; {item.metadata['range']}"
    default = default_of(item)
    if default is not None and "default" not in help_text:
        help_text += f" (default: {default!r})"
    return help_text


def add_arguments(
    parser: argparse.ArgumentParser,
    root: type,
    exclude: tuple[str, ...] = (),
    aliases: Mapping[str, str] | None = None,
) -> list[str]:
    """Add one ``--section.field`` option per field of the configuration dataclass ``root`` (a group per
    section, with the field's help, type, default and choices; for a section with declared options, each
    option any entry declares, with what it is for each entry) and the ``aliases`` (``{alias: path}``);
    returns their destinations for :func:`given_values`.

    Options default to "not given", so only what the command line names overrides the file. Each value is
    parsed once, as YAML (:func:`read_yaml`); the configuration checks it when it is built."""
    destinations = []
    alias_of = {path: alias for alias, path in (aliases or {}).items()}

    def add(group, path: str, annotation, help_text: str) -> None:
        boolean = annotation is bool or annotation == (bool | None)
        flags = [f"--{alias_of[path]}"] if path in alias_of else []
        group.add_argument(
            f"--{path}", *flags, dest=path, default=argparse.SUPPRESS, metavar=type_name(annotation),
            type=read_yaml, nargs="?" if boolean else None, const=True if boolean else None,
            help=help_text.replace("%", "%%"),
        )  # fmt: skip
        destinations.append(path)

    def add_section(group, cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            path = f"{prefix}{item.name}"
            if item.metadata.get("declared_by"):
                for name, (annotation, help_text) in declared_options(item.metadata["declared_by"]).items():
                    if f"{prefix}{name}" not in exclude:
                        add(group, f"{prefix}{name}", annotation, help_text)
            elif path not in exclude and not (prefix == "" and dataclasses.is_dataclass(hints[item.name])):
                add(group, path, hints[item.name], field_help(item))

    add_section(parser.add_argument_group("recipe (each overrides the --config file)"), root, "")
    hints = typing.get_type_hints(root)
    for item in dataclasses.fields(root):
        section = hints[item.name]
        if dataclasses.is_dataclass(section):
            title = section.__doc__.split("\n")[0].rstrip(".")
            group = parser.add_argument_group(f"recipe section {item.name} ({title[0].lower()}{title[1:]})")
            add_section(group, section, f"{item.name}.")
    return destinations


def declared_options(declarations: Declarations) -> dict[str, tuple[Any, str]]:
    """Every option the entries of ``declarations`` declare: ``{name: (type, help)}``, the help saying what it
    is for each entry that has it (``hmmc: hinge margin (default: 0.2) | posapl: ...``)."""
    found: dict[str, list[tuple[str, Any, dataclasses.Field]]] = {}
    for entry, options in declarations().items():
        hints = typing.get_type_hints(options)
        for item in dataclasses.fields(options):
            found.setdefault(item.name, []).append((entry, hints[item.name], item))
    described = {}
    for name, uses in found.items():
        annotations = list(dict.fromkeys(annotation for _, annotation, _ in uses))
        annotation = annotations[0] if len(annotations) == 1 else typing.Union[tuple(annotations)]  # noqa: UP007
        described[name] = (annotation, " | ".join(f"{entry}: {field_help(item)}" for entry, _, item in uses))
    return described


def given_values(arguments: argparse.Namespace, destinations: list[str]) -> dict[str, Any]:
    """The options given on the command line, ``{"section.field": value}``."""
    return {path: getattr(arguments, path) for path in destinations if hasattr(arguments, path)}
