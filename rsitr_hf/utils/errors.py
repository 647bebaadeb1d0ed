"""The project's input and environment errors.

Every error a user can fix (a recipe field out of range, a malformed caption file, a damaged index or
checkpoint, a missing model) is an :class:`InputError` whose message names the file, line or field and what
was expected. Every console command turns one into a single line on stderr and exit status 2
(:func:`rsitr_hf.cli.command`); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """An input or environment error, reported as one line (``<command>: error: <message>``), exit 2."""


class CheckpointError(InputError):
    """A training checkpoint or output folder that cannot be used as asked (incomplete, damaged, or a
    previous run's outputs in the way)."""


class OutputError(InputError):
    """A file that cannot be written (disk full, read-only file system, no permission), naming its path."""


class AdapterFileError(InputError):
    """An adapter folder whose config or weights cannot be read as an rsitr_hf / PEFT adapter."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (library errors often run to many), or its type's name when it
    has none: what a one-line report of a wrapped error quotes."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
