"""Two small dictionary helpers that abagen's users (and abagen's own tests) import from
``abagen.utils``: per-donor results are dicts of dicts, and these pick one field out of them."""

from __future__ import annotations

__all__ = ["flatten_dict", "first_entry"]


def _as_dict(obj) -> dict:
    """``obj`` itself when it is a dict, else its items numbered from 0 (a str is one item)."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, str):
        obj = [obj]
    return dict(enumerate(obj))


def flatten_dict(dictionary, subkey) -> dict:
    """``{key: value[subkey]}`` for every entry (None where an entry lacks ``subkey``).

    >>> flatten_dict({'9861': {'probes': 'a.csv'}, '10021': {'probes': 'b.csv'}}, 'probes')
    {'9861': 'a.csv', '10021': 'b.csv'}
    """
    return {key: value.get(subkey) for key, value in _as_dict(dictionary).items()}


def first_entry(dictionary, subkey=None):
    """The first entry of ``dictionary`` (or its ``subkey`` field, None if it has none)."""
    entry = next(iter(_as_dict(dictionary).values()))
    return entry if subkey is None else entry.get(subkey)
