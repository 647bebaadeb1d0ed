"""What every rsitr_hf command shares.

- One flag convention: ``--snake_case``, as transformers' and accelerate's scripts (``--output_dir``,
  ``--top_k``); recipe fields are ``--section.field``.
- ``--help`` shows every option with its default.
- Progress and notices go to the ``rsitr_hf`` loggers (stderr); a command's results go to stdout.
- An input error (:class:`rsitr_hf.errors.InputError`) is one line on stderr (``<command>: error: ...``) and
  exit status 2, as argparse does; :func:`command` does this for every console command.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence

from .errors import InputError

INPUT_ERROR_STATUS = 2

logger = logging.getLogger(__name__)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; an option's default follows its help unless the help already says it,
    or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and not action.option_strings == []
        if shown and "default" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text.strip()


def command_parser(description: str | None, **kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the project's help format; abbreviations of flags are not accepted."""
    return argparse.ArgumentParser(
        description=description, formatter_class=HelpFormatter, allow_abbrev=False, **kwargs
    )


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Set up logging and parse (``argv`` defaults to ``sys.argv[1:]``)."""
    configure_logging()
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


class StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (as ``logging.lastResort`` does), so that a replaced or
    captured stderr is honoured."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Send the ``rsitr_hf`` loggers' messages to stderr, one plain line each (once per process)."""
    package_logger = logging.getLogger("rsitr_hf")
    if not any(isinstance(handler, StderrHandler) for handler in package_logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package_logger.addHandler(handler)
    package_logger.setLevel(level)


def report_error(error: BaseException, status: int = INPUT_ERROR_STATUS) -> int:
    """Print ``<command>: error: <error>`` on stderr and return the exit status (2 for input errors)."""
    program = sys.argv[0].rsplit("/", 1)[-1] or "rsitr_hf"
    print(f"{program}: error: {error}", file=sys.stderr)
    return status


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a command's ``main(argv=None)``: an :class:`InputError` (or a file the operating system
    cannot find or open) becomes one line on stderr and exit status 2; other exceptions are bugs and keep
    their traceback."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except (
            InputError,
            FileNotFoundError,
            IsADirectoryError,
            NotADirectoryError,
            PermissionError,
        ) as error:
            return report_error(error)

    return run
