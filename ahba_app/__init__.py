"""ahba-app: Allen Human Brain Atlas microarray data to region x gene tables.

The public API mirrors abagen's, so that ``import ahba_app as abagen`` runs scripts written for
abagen. Importing this package has no side effects (no network, configuration or threads), and
the heavy modules load only when one of their names is first used.
"""

from importlib import import_module

from ._version import __version__

# public name -> module that defines it (loaded on first use; nothing heavy is imported with the
# package, so that the command line can install its signal handlers first)
_LAZY = {
    "DONORS": "datasets",
    "fetch_desikan_killiany": "datasets",
    "fetch_donor_info": "datasets",
    "fetch_fsaverage5": "datasets",
    "fetch_gene_group": "datasets",
    "get_expression_data": "api",
    "get_samples_in_mask": "api",
    "get_interpolated_map": "api",
    "normalize_expression": "correct",
    "keep_stable_genes": "correct",
    "remove_distance": "correct",
    "fetch_microarray": "fetch",
    "fetch_rnaseq": "fetch",
    "AtlasTree": "atlas",
    "check_atlas": "atlas",
    "leftify_atlas": "atlas",
    "annot_to_gifti": "atlas",
    "relabel_gifti": "atlas",
    "fetch_raw_mri": "fetch",
    "fetch_freesurfer": "fetch",
    "Report": "reporting",
}

# abagen's submodules, reachable as attributes after ``import ahba_app as abagen``
_SUBMODULES = ("allen", "correct", "datasets", "images", "io", "matching", "mouse",
               "reporting", "transforms", "utils")

__all__ = ["__version__", *_LAZY, "io", "mouse"]


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)   # binds itself as an attribute
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ahba_app' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
