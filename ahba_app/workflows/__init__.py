"""Nipype workflow builders (``init_<stage>_wf``): they wire nodes and never compute."""

from .atlas import init_atlas_wf
from .base import init_ahba_wf
from .data import init_ahba_data_wf

__all__ = ["init_ahba_data_wf", "init_ahba_wf", "init_atlas_wf"]
