"""The search layer's input error."""

from __future__ import annotations

from ..utils.errors import InputError


class SearchError(InputError, ValueError):
    """A search input is unusable (wrong model for an index, unreadable image, empty caption file ...)."""
