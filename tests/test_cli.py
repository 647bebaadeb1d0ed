"""One flag convention for every command (``--snake_case``), a full ``--help``, recipe fields as options, and
logging instead of prints for progress."""

import configparser
import dataclasses
import importlib
import logging
import re
import typing

import pytest
from conftest import ROOT

from rsitr_hf.training.recipe import Recipe, add_recipe_arguments, load_recipe, recipe_overrides
from rsitr_hf.utils import cli


def console_commands() -> dict[str, str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines)


def help_of(target: str, arguments: list[str], capsys) -> str:
    module, function = target.split(":")
    with pytest.raises(SystemExit) as exit_info:
        getattr(importlib.import_module(module), function)([*arguments, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def recipe_paths() -> list[str]:
    """Every recipe option: each field, and in a section with declared options (the loss's, the text
    inputs'), each option that any registered entry declares."""
    paths = []
    hints = typing.get_type_hints(Recipe)
    for recipe_field in dataclasses.fields(Recipe):
        section = hints[recipe_field.name]
        if not dataclasses.is_dataclass(section):
            paths.append(recipe_field.name)
            continue
        for inner in dataclasses.fields(section):
            declared_by = inner.metadata.get("declared_by")
            names = (
                [f.name for o in declared_by().values() for f in dataclasses.fields(o)]
                if declared_by
                else [inner.name]
            )
            paths += [f"{recipe_field.name}.{name}" for name in dict.fromkeys(names)]
    return paths


@pytest.mark.parametrize("command", sorted(console_commands()))
def test_every_command_documents_every_option_in_snake_case(command, capsys):
    target = console_commands()[command]
    sub_commands = [["index"], ["query"]] if command == "rsitr-search" else [[]]
    for arguments in sub_commands:
        text = help_of(target, arguments, capsys)
        flags = set(re.findall(r"(?<![\w-])--[\w.-]+", text))
        assert flags and not [flag for flag in flags if "-" in flag[2:]], flags
        lines = text[text.index("options:") :].splitlines() + [""]
        bare = [
            line
            for line, following in zip(lines, lines[1:], strict=False)
            if re.fullmatch(r"  -[-\w.]+(, -[-\w.]+)*( \S+)?", line) and not following.startswith(" " * 10)
        ]
        assert not bare, f"{command}: options without help: {bare}"


def test_training_help_lists_every_recipe_field_with_its_default(capsys):
    text = help_of("rsitr_hf.training.cli:main", [], capsys)
    for path in recipe_paths():
        assert f"--{path} " in text, path
    assert "--push_to_hub" in text and "--hub_model_id" in text  # transformers' spellings
    assert "(default: 30)" in text  # training.epochs
    assert "--loss.token_dropout" in text and "--text.pos_model" in text  # options the tables declare


def test_recipe_options_override_the_file_and_bare_booleans_mean_true(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("training: {epochs: 3}\ndata: {augment: false}\n")
    parser = cli.command_parser("test")
    destinations = add_recipe_arguments(parser)
    arguments = parser.parse_args(
        ["--training.epochs", "5", "--data.augment", "--push_to_hub", "--hub_model_id", "u/m"]
    )
    loaded = load_recipe(recipe, recipe_overrides(arguments, destinations))
    assert loaded.training.epochs == 5 and loaded.data.augment is True
    assert loaded.hub.push_to_hub is True and loaded.hub.model_id == "u/m"
    untouched = load_recipe(recipe, recipe_overrides(parser.parse_args([]), destinations))
    assert untouched.training.epochs == 3 and untouched.data.augment is False


def test_unknown_options_exit_2_naming_them(capsys):
    from rsitr_hf.training import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--training.bach_size", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --training.bach_size 3" in capsys.readouterr().err


def test_kebab_case_spellings_are_unknown_options(capsys):
    """rsitr_hf 0.2 has one spelling: ``--top-k`` (0.1's) is an unknown option, exit status 2."""
    parser = cli.command_parser("test")
    parser.add_argument("--top_k", type=int, default=5)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_arguments(parser, ["--top-k", "3"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --top-k 3" in capsys.readouterr().err
    assert cli.parse_arguments(parser, ["--top_k", "3"]).top_k == 3


def test_progress_goes_to_loggers_and_results_to_stdout(caplog, capsys, tmp_path):
    """The PETL runner's progress is a log record (stderr in a terminal), its table the command's output."""
    from rsitr_hf.tools.petl_harness import logger

    with caplog.at_level(logging.INFO, logger="rsitr_hf"):
        logger.info("[rsitr-petl] %s, seed %d -> %s", "mrs", 0, tmp_path)
    assert caplog.records[-1].name == "rsitr_hf.tools.petl_harness"
    cli.configure_logging()
    cli.configure_logging()  # once per process: no duplicate handlers
    handlers = [h for h in logging.getLogger("rsitr_hf").handlers if isinstance(h, cli.StderrHandler)]
    assert len(handlers) == 1
