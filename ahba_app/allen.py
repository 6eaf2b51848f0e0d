"""abagen's ``allen`` module name: the three workflows, for ``from abagen import allen``.

The functions live in :mod:`ahba_app.api`; ``allen.datasets`` is reachable as in abagen.
"""

from . import datasets
from .api import get_expression_data, get_interpolated_map, get_samples_in_mask

__all__ = ["get_expression_data", "get_samples_in_mask", "get_interpolated_map", "datasets"]
