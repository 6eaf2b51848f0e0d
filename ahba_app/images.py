"""abagen's ``images`` module name, for scripts that call ``abagen.images.check_atlas``."""

from .atlas import (BACKGROUND, AtlasTree, annot_to_gifti, check_atlas, check_atlas_info,
                    leftify_atlas, relabel_gifti)

__all__ = ["BACKGROUND", "AtlasTree", "annot_to_gifti", "check_atlas", "check_atlas_info",
           "leftify_atlas", "relabel_gifti"]
