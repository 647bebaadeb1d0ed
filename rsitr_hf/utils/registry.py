"""The tables of things declared by name: methods, losses, kinds of text inputs. Each entry has a ``summary``;
reading a table through :meth:`Table.find` or :meth:`Table.summaries` first loads the declarations of
installed packages (:func:`~rsitr_hf.utils.plugins.load_plugins`)."""

from __future__ import annotations

from typing import Any

from .plugins import load_plugins


class Table(dict):
    """Entries by name, in the order they were declared (``kind`` names them in errors)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, entry: Any) -> Any:
        """Add ``entry`` as ``name`` (declaring an equal entry again does nothing) and return it."""
        known = dict.get(self, name)
        if known is not None and known != entry:
            raise ValueError(f"a different {self.kind} is already registered as {name!r}")
        self[name] = entry
        return entry

    def find(self, name: str) -> Any:
        """The entry ``name``; a ``ValueError`` naming the known ones otherwise."""
        load_plugins()
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r} (known: {', '.join(self)})") from None

    def each(self, attribute: str) -> dict[str, Any]:
        """``{name: entry.<attribute>}`` of every entry, in the order they were declared."""
        load_plugins()
        return {name: getattr(entry, attribute) for name, entry in self.items()}

    def summaries(self) -> dict[str, str]:
        """``{name: summary}`` of every entry."""
        return self.each("summary")
