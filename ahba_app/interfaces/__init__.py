"""Nipype interfaces: one thin ``SimpleInterface`` per stage of :mod:`ahba_app.pipeline`.

Intermediate results travel between nodes as Arrow IPC / JSON files
(:mod:`ahba_app.interfaces._files`), never as pickled frames.
"""

from .atlas import AggregateExpression, MatchSamples, NormalizeExpression
from .bids import GroupDerivatives, ParticipantDerivatives
from .data import FilterProbes, LoadProbes, LocateData, PrepareSamples, SelectProbes
from .reports import RunReport

__all__ = [
    "AggregateExpression", "FilterProbes", "GroupDerivatives", "LoadProbes", "LocateData",
    "MatchSamples", "NormalizeExpression", "ParticipantDerivatives", "PrepareSamples",
    "RunReport", "SelectProbes",
]
