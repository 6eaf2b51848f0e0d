"""BIDS input: finding the atlases of an input dataset.

The input folder is a BIDS atlas dataset (a derivative-style folder, indexed with pybids and
``validate=False``): ``dseg`` images named after BIDS / TemplateFlow conventions, e.g.
``tpl-MNI152NLin6Asym_res-01_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz``, GIFTI
pairs ``tpl-fsaverage_hemi-L_..._dseg.label.gii`` / ``hemi-R``, CIFTI ``_dseg.dlabel.nii`` and
donor-native atlases under ``sub-<donor>/``. Each is described by the most specific
``_dseg.tsv`` whose entities are a subset of its own (BIDS inheritance): columns ``index`` (or
``id``), ``name``, and optionally ``hemisphere`` and ``structure``. pybids knows most entities of
these names but not ``tpl`` or ``scale``; :func:`parse_entities` reads every ``key-value`` pair
of a file name and fills in what pybids left out. When pybids cannot index the folder at all the
same parser lists the files.

Writing the outputs (BIDS derivatives) is :mod:`ahba_app.derivatives`; its names are
re-exported here for the callers that know them as ``bids.*``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pandas as pd


LGR = logging.getLogger("ahba_app")

__all__ = [
    "AtlasInput", "BIDSInputError", "BIDSIGNORE", "CODE_URL", "IMAGE_EXTENSIONS",
    "check_region_table", "container_info", "dataset_description", "default_atlas",
    "derivative_path", "discover_atlases", "load_atlas_input", "parse_entities",
    "read_region_table", "select_atlases", "sha256", "write_json", "write_text", "write_tsv",
]


#: Extensions of atlas images, longest first (so that ``.label.gii.gz`` wins over ``.gz``).
IMAGE_EXTENSIONS = (".label.gii.gz", ".dlabel.nii.gz", ".label.gii", ".dlabel.nii", ".nii.gz",
                    ".nii", ".mgz", ".annot")
_KNOWN_EXTENSIONS = IMAGE_EXTENSIONS + (".surf.gii.gz", ".surf.gii", ".tsv.gz", ".tsv", ".json")
_SURFACE_SUFFIXES = ("midthickness", "pial", "white", "smoothwm")

#: pybids' entity names -> the keys used in file names.
_SHORT = {"subject": "sub", "session": "ses", "segmentation": "seg", "template": "tpl",
          "scale": "scale", "resolution": "res", "density": "den", "description": "desc",
          "hemisphere": "hemi"}
#: Order of the entities in output names (others follow in alphabetical order).
_OUTPUT_ORDER = ("space", "res", "den", "seg", "scale")
#: Entities that tell files of one atlas apart but do not name the atlas.
_NOT_ATLAS = ("sub", "ses", "hemi")

#: Suffixes of ahba-app's outputs, which BIDS does not define.


class BIDSInputError(ValueError):
    """An input dataset without usable atlases, or with an atlas that cannot be used."""


# ---------------------------------------------------------------------------------------------
# file names
# ---------------------------------------------------------------------------------------------
def _split_extension(name: str) -> tuple[str, str]:
    for ext in _KNOWN_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.partition(".")
    return stem, (dot + ext) if dot else ""


def parse_entities(path: str | os.PathLike) -> dict:
    """Entities of a BIDS-like file name: every ``key-value`` part, plus suffix and extension.

    >>> parse_entities("tpl-fsaverage_hemi-L_atlas-Schaefer2018_scale-400_dseg.label.gii")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'tpl': 'fsaverage', 'hemi': 'L', 'atlas': 'Schaefer2018', 'scale': '400',
     'suffix': 'dseg', 'extension': '.label.gii'}
    """
    stem, ext = _split_extension(Path(path).name)
    out: dict = {}
    parts = stem.split("_")
    for part in parts[:-1] if parts and "-" not in parts[-1] else parts:
        key, sep, value = part.partition("-")
        if sep and key and value:
            out[key] = value
    if parts and "-" not in parts[-1]:
        out["suffix"] = parts[-1]
    out["extension"] = ext
    return out


def _pybids_files(root: Path) -> list[tuple[Path, dict]] | None:
    """Every file pybids indexes under ``root`` with its entities (short keys), or None."""
    try:
        import warnings

        from bids import BIDSLayout, BIDSLayoutIndexer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            indexer = BIDSLayoutIndexer(validate=False, index_metadata=False)
            layout = BIDSLayout(str(root), validate=False, config=["bids", "derivatives"],
                                indexer=indexer)
        files = layout.get(return_type="object")
    except Exception as err:  # pybids cannot index it: our own parser does the listing
        LGR.debug("pybids could not index %s (%s); listing files directly.", root, err)
        return None
    out = []
    for bf in files:
        ents = {_SHORT.get(k, k): str(v) for k, v in bf.get_entities().items()
                if k not in ("datatype",)}
        out.append((Path(bf.path), ents))
    return out


def _walk(root: Path) -> list[tuple[Path, dict]]:
    """Every file under ``root`` (hidden ones and derivatives/sourcedata/code left out).

    Folder links are not followed (a link to a parent would loop). A folder whose name is an
    atlas image's is an error: it would otherwise be silently ignored."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if (name.endswith(IMAGE_EXTENSIONS) and "_dseg." in name
                    and not os.path.islink(os.path.join(dirpath, name))):
                raise BIDSInputError(f"{Path(dirpath) / name} is a folder, not an atlas image "
                                     "file: replace it by the image (or rename it).")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and d not in ("derivatives", "sourcedata", "code"))
        for name in sorted(filenames):
            if not name.startswith("."):
                out.append((Path(dirpath) / name, {}))
    return out


def _one_path_per_file(files: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """Files reached again through a folder link (``ln -s . loop``, a link to a parent) are
    the same files: keep the path that goes through no folder link."""
    best: dict = {}
    for i, (path, _) in enumerate(files):
        linked = os.path.realpath(path.parent) != os.path.abspath(path.parent)
        rank = (linked, len(path.parts), i)
        real = os.path.realpath(path)
        if real not in best or rank < best[real]:
            best[real] = rank
    keep = {rank[2] for rank in best.values()}
    return [item for i, item in enumerate(files) if i in keep]


def _indexed(root: Path) -> list[tuple[Path, dict]]:
    """(path, entities) for every file: pybids' entities, completed by :func:`parse_entities`."""
    listed = _walk(root)
    if not listed:  # nothing pybids would index: spare its import and database (~0.3 s)
        return []
    files = _pybids_files(root)
    if files is None:
        files = listed
    files = _one_path_per_file(files)
    out = []
    for path, ents in files:
        parsed = parse_entities(path)
        merged = dict(parsed)
        merged.update({k: v for k, v in ents.items() if k in parsed or k in ("suffix",
                                                                              "extension")})
        out.append((path, merged))
    return out


# ---------------------------------------------------------------------------------------------
# atlases
# ---------------------------------------------------------------------------------------------
@dataclass
class AtlasInput:
    """One atlas of the input dataset, ready for :func:`ahba_app.pipeline.load_atlas`.

    ``image`` is a path (volume, CIFTI), a [left, right] pair (GIFTI) or, for donor-native
    atlases, a dict of donor -> one of those. ``info`` is the region table (TSV/CSV) or None;
    ``has_info`` says whether it has the hemisphere and structure columns that constrain
    matching (when it does not, it is only used for region names and index checks).
    ``geometry`` is a [left, right] pair of surfaces (GIFTI/CIFTI atlases not on fsaverage5).
    ``checksums`` (path -> SHA-256), ``n_regions`` and ``constrained`` (whether matching is
    constrained by hemisphere and structure, from a table or from GIFTI label tables) are filled
    in once the atlas has been loaded and checked.
    """

    label: str
    entities: dict = field(default_factory=dict)
    kind: str = "volumetric"
    image: object = None
    info: str | None = None
    has_info: bool = False
    geometry: list | None = None
    space: str | None = None
    bundled: bool = False
    checksums: dict = field(default_factory=dict)
    n_regions: int | None = None
    constrained: bool | None = None

    @property
    def name(self) -> str:
        """The atlas label of the outputs: the ``atlas`` entity, with a ``desc`` folded in."""
        desc = self.entities.get("desc")
        return f"{self.label}{desc}" if desc else self.label

    @property
    def template(self) -> str | None:
        return self.entities.get("tpl") or self.entities.get("space")

    def output_entities(self) -> list[tuple[str, str]]:
        """(key, value) pairs naming the outputs derived from this atlas, desc excluded."""
        ents = {"space": self.template} if self.template else {}
        if self.kind == "donor-native":
            ents["space"] = "native"
        for key, value in self.entities.items():
            if key not in ("atlas", "tpl", "space", "desc", "suffix", "extension") \
                    and key not in _NOT_ATLAS:
                ents[key] = value
        ordered = [(k, ents[k]) for k in _OUTPUT_ORDER if k in ents]
        ordered += sorted((k, v) for k, v in ents.items() if k not in _OUTPUT_ORDER)
        return [("atlas", self.name)] + ordered

    @property
    def key(self) -> str:
        """What tells this atlas's outputs from other atlases': ``atlas-<name>[_<entities>]``."""
        return "_".join(f"{k}-{v}" for k, v in self.output_entities())

    def stem(self, desc: str, donor: str | None = None) -> str:
        """``[sub-<donor>_]atlas-<name>[_<entities>]_desc-<desc>``."""
        parts = [f"sub-{donor}"] if donor else []
        parts += [f"{k}-{v}" for k, v in self.output_entities()]
        parts.append(f"desc-{desc}")
        return "_".join(parts)

    def files(self) -> list[str]:
        """Every input file of the atlas (images, region table, surfaces)."""
        def flat(obj):
            if obj is None:
                return []
            if isinstance(obj, Mapping):
                return [p for value in obj.values() for p in flat(value)]
            if isinstance(obj, (list, tuple)):
                return [p for value in obj for p in flat(value)]
            return [str(obj)]
        return flat(self.image) + flat(self.info) + flat(self.geometry)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping) -> "AtlasInput":
        return cls(**dict(value))


def default_atlas() -> AtlasInput:
    """The bundled Desikan-Killiany atlas (1 mm MNI152 volume with hemisphere/structure)."""
    from .datasets import fetch_desikan_killiany

    dk = fetch_desikan_killiany()
    return AtlasInput(label="desikankilliany", entities={"atlas": "desikankilliany"},
                      kind="volumetric", image=str(dk["image"]), info=str(dk["info"]),
                      has_info=True, space=None, bundled=True)


def _space_key(template: str | None, density: str | None = None) -> str | None:
    """check_atlas's ``space`` for a TemplateFlow template name (and density), None when it
    names no space that check_atlas knows (:func:`ahba_app.atlas.space_key`)."""
    from .atlas import space_key

    return space_key(template, density=density, strict=False)


def _subset(small: Mapping, big: Mapping) -> bool:
    return all(big.get(k) == v for k, v in small.items())


def _best_table(entities: Mapping, tables: list[tuple[Path, dict]], donor: str | None,
                hemi_pair: bool) -> list[Path]:
    """The region table(s) of an atlas: the most specific TSV whose entities it has."""
    want = {k: v for k, v in entities.items() if k not in ("suffix", "extension")}
    if donor:
        want["sub"] = donor
    candidates = []
    for path, ents in tables:
        key = {k: v for k, v in ents.items() if k not in ("suffix", "extension")}
        hemi = key.pop("hemi", None)
        if "atlas" in key and _subset(key, want):
            candidates.append((len(key), hemi, path))
    if not candidates:
        return []
    best = max(n for n, _, _ in candidates)
    chosen = [(hemi, path) for n, hemi, path in candidates if n == best]
    whole = [path for hemi, path in chosen if hemi is None]
    if whole:
        return [sorted(whole)[0]]
    if hemi_pair:
        by_hemi = {hemi: path for hemi, path in chosen}
        if {"L", "R"} <= set(by_hemi):
            return [by_hemi["L"], by_hemi["R"]]
    return []


def _surfaces(entities: Mapping, surfaces: list[tuple[Path, dict]], donor=None) -> list | None:
    """A [left, right] pair of surfaces of the atlas's template (and density), if any."""
    tpl = entities.get("tpl") or entities.get("space")
    den = entities.get("den")
    by_hemi: dict = {}
    for suffix in _SURFACE_SUFFIXES:
        for path, ents in surfaces:
            if ents.get("suffix") != suffix:
                continue
            if (ents.get("tpl") or ents.get("space")) != tpl and not donor:
                continue
            if donor and ents.get("sub") != donor:
                continue
            if den and ents.get("den") not in (None, den):
                continue
            by_hemi.setdefault(ents.get("hemi"), path)
        if "L" in by_hemi and "R" in by_hemi:
            return [str(by_hemi["L"]), str(by_hemi["R"])]
        by_hemi = {}
    return None


def _kind_of(extension: str) -> str:
    if extension.startswith(".label.gii") or extension == ".annot":
        return "surface"
    if extension.startswith(".dlabel.nii"):
        return "cifti"
    return "volumetric"


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    sep = "\t" if path.name.endswith((".tsv", ".tsv.gz")) else ","
    try:
        return pd.read_csv(path, sep=sep, **kwargs)
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError,
            pd.errors.ParserError) as err:
        raise BIDSInputError(f"Cannot read the region table {path}: {err}. It must be a "
                             "tab-separated text file with 'index' and 'name' columns: fix or "
                             "replace it.") from None


def _region_table_columns(path: Path) -> list[str]:
    return list(_read_table(path, nrows=0).columns)


def discover_atlases(input_dir: str | os.PathLike, donors: Iterable[str] | None = None
                     ) -> list[AtlasInput]:
    """Every atlas of a BIDS atlas dataset, sorted by output name.

    Donor-native atlases (files under ``sub-<donor>/``) are kept only when every one of
    ``donors`` has one; otherwise :class:`BIDSInputError` names the donors that lack it. A
    ``dseg`` image without an ``atlas-`` entity is skipped with a warning. Raises
    :class:`BIDSInputError` when the folder does not exist.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise BIDSInputError(f"The input folder {root} does not exist or is not a folder.")
    donors = [str(d) for d in donors] if donors is not None else None
    files = _indexed(root)
    images = [(p, e) for p, e in files
              if e.get("suffix") == "dseg" and e.get("extension") in IMAGE_EXTENSIONS]
    tables = [(p, e) for p, e in files
              if e.get("suffix") == "dseg" and e.get("extension") in (".tsv", ".tsv.gz")]
    surfaces = [(p, e) for p, e in files if e.get("extension", "").startswith(".surf.gii")]

    groups: dict = {}
    for path, ents in images:
        if "atlas" not in ents:
            LGR.warning("Skipping %s: its name has no atlas-<label> entity.", path)
            continue
        key_ents = {k: v for k, v in ents.items() if k not in _NOT_ATLAS + ("suffix",)}
        key_ents["extension"] = _kind_of(ents["extension"])
        key = (tuple(sorted(key_ents.items())), "sub" in ents)
        groups.setdefault(key, []).append((path, ents))

    atlases = []
    for (key, native), members in sorted(groups.items()):
        entities = {k: v for k, v in key if k != "extension"}
        kind = dict(key)["extension"]
        if native:
            atlas = _native_atlas(entities, kind, members, tables, surfaces, donors)
        else:
            atlas = _group_atlas(entities, kind, members, tables, surfaces)
        if atlas is not None:
            atlases.append(atlas)
    keys = [a.key for a in atlases]
    clashes = sorted({k for k in keys if keys.count(k) > 1})
    if clashes:
        raise BIDSInputError(f"Several atlases would write outputs named {', '.join(clashes)}: "
                             "give them distinct entities (e.g. desc-).")
    return sorted(atlases, key=lambda a: a.key)


def _image_of(kind: str, members: list[tuple[Path, dict]], where: str):
    if kind == "surface":
        by_hemi = {ents.get("hemi"): path for path, ents in members}
        if not {"L", "R"} <= set(by_hemi):
            raise BIDSInputError(
                f"{where}: a surface atlas needs a hemi-L and a hemi-R file; found "
                f"{', '.join(p.name for p, _ in members)}.")
        return [str(by_hemi["L"]), str(by_hemi["R"])]
    if len(members) > 1:
        raise BIDSInputError(f"{where}: several images share the same entities "
                             f"({', '.join(p.name for p, _ in members)}); rename them so that "
                             "each atlas has a unique name.")
    return str(members[0][0])


def _with_table(atlas: AtlasInput, found: list[Path]) -> AtlasInput:
    if len(found) == 1:
        atlas.info = str(found[0])
        cols = _region_table_columns(found[0])
        atlas.has_info = "hemisphere" in cols and "structure" in cols
    elif len(found) == 2:  # per-hemisphere tables of a surface pair
        atlas.info = [str(p) for p in found]
        atlas.has_info = all({"hemisphere", "structure"} <= set(_region_table_columns(p))
                             for p in found)
    return atlas


def _group_atlas(entities, kind, members, tables, surfaces) -> AtlasInput:
    where = f"atlas-{entities['atlas']} ({members[0][0].parent})"
    image = _image_of(kind, members, where)
    template = entities.get("tpl") or entities.get("space")
    atlas = AtlasInput(label=entities["atlas"], entities=entities, kind=kind, image=image,
                       space=(_space_key(template, entities.get("den"))
                              if kind != "volumetric" else None))
    if kind in ("surface", "cifti"):
        atlas.geometry = _surfaces(entities, surfaces)
    return _with_table(atlas, _best_table(entities, tables, None, kind == "surface"))


def _native_atlas(entities, kind, members, tables, surfaces, donors) -> AtlasInput | None:
    by_donor: dict = {}
    for path, ents in members:
        by_donor.setdefault(ents["sub"], []).append((path, ents))
    where = f"donor-native atlas-{entities['atlas']}"
    wanted = donors if donors is not None else sorted(by_donor, key=str)
    missing = [d for d in wanted if d not in by_donor]
    if missing:
        raise BIDSInputError(
            f"{where} has no file for donor(s) {', '.join(missing)} (found "
            f"{', '.join('sub-' + d for d in sorted(by_donor))}): add sub-<donor>/ files for "
            "every donor, narrow the donors with --participant-label, or leave this atlas out "
            "with --atlas.")
    image = {d: _image_of(kind, by_donor[d], f"{where}, sub-{d}") for d in wanted}
    atlas = AtlasInput(label=entities["atlas"], entities=entities, kind="donor-native",
                       image=image, space="fsnative" if kind == "surface" else None)
    if kind == "surface":
        geometry = {d: _surfaces(entities, surfaces, donor=d) for d in wanted}
        atlas.geometry = geometry if all(geometry.values()) else None
    first = wanted[0] if wanted else None
    return _with_table(atlas, _best_table(entities, tables, first, kind == "surface"))


def select_atlases(atlases: list[AtlasInput], wanted: Iterable[str] | None) -> list[AtlasInput]:
    """The atlases named by ``--atlas`` (atlas- label or output name, case-insensitive)."""
    if not wanted:
        return list(atlases)
    wanted = list(wanted)
    keys = {w.lower().removeprefix("atlas-") for w in wanted}
    chosen = [a for a in atlases if a.label.lower() in keys or a.name.lower() in keys]
    known = {a.label for a in atlases} | {a.name for a in atlases}
    unknown = [w for w in wanted if w.lower().removeprefix("atlas-") not in
               {k.lower() for k in known}]
    if unknown:
        shown = ", ".join(sorted(known)) or "none"
        raise BIDSInputError(f"--atlas {' '.join(unknown)}: no such atlas in the input folder "
                             f"(available: {shown}).")
    return chosen


class _RecentAtlases:
    """The last few group atlases loaded in one run, by the SHA-256 of their files.

    With Nipype's Linear plugin every node runs in one process, and the run's check, the
    matching, the aggregation and the report would each load (and index) the same atlas again.
    The key holds every file's checksum (:attr:`AtlasInput.checksums`, taken before loading),
    so a file changed in place is loaded anew; atlases without checksums are never kept. The
    memo belongs to the run (:func:`remembering_atlases`), not to the module.
    """

    def __init__(self, size: int = 2):
        self.size, self.entries = size, {}

    @staticmethod
    def key(atlas: AtlasInput) -> str | None:
        files = atlas.files()
        if (atlas.kind == "donor-native" or not files
                or any(path not in atlas.checksums for path in files)):
            return None
        return json.dumps([atlas.kind, atlas.image, atlas.info, atlas.has_info, atlas.geometry,
                           atlas.space, [atlas.checksums[path] for path in files]],
                          default=str)

    def get(self, key: str | None):
        found = self.entries.pop(key, None) if key is not None else None
        if found is not None:
            self.entries[key] = found  # now the most recent
        return found

    def put(self, key: str | None, value) -> None:
        if key is None:
            return
        self.entries[key] = value
        while len(self.entries) > self.size:
            self.entries.pop(next(iter(self.entries)))


#: The memo of the run in progress (None outside :func:`remembering_atlases`).
_RUN_ATLASES: ContextVar[_RecentAtlases | None] = ContextVar("ahba_app_run_atlases",
                                                             default=None)


def remember_atlases(count: int) -> None:
    """Let the memo of the run in progress (:func:`remembering_atlases`) keep at least
    ``count`` atlases (nothing outside one)."""
    memo = _RUN_ATLASES.get()
    if memo is not None:
        memo.size = max(memo.size, int(count))


@contextmanager
def remembering_atlases(size: int = 2) -> Iterator[_RecentAtlases]:
    """Within the block (one run of the command line), a group atlas with checksums is loaded
    once: the run's memo, dropped when the block ends."""
    memo = _RecentAtlases(size)
    token = _RUN_ATLASES.set(memo)
    try:
        yield memo
    finally:
        _RUN_ATLASES.reset(token)


def load_atlas_input(atlas: AtlasInput, donors, data_dir=None) -> tuple[dict, bool]:
    """``{donor: AtlasTree}`` for ``atlas`` and whether it is one group atlas.

    Runs :func:`ahba_app.atlas.coerce_atlas_to_dict` (what the Python API runs), passing the
    surfaces and space that GIFTI / CIFTI atlases found in the input folder need. Within
    :func:`remembering_atlases` a group atlas with checksums is loaded once (see
    :class:`_RecentAtlases`): callers read the trees, they do not change them. A donor-native
    atlas maps each donor's MRI voxels through the donor's raw T1w in ``data_dir`` when there
    is one, as in the Python API (:func:`ahba_app.atlas.native_affines`).
    """
    from .atlas import native_affines
    from .datasets import check_donors

    memo = _RUN_ATLASES.get()
    key = _RecentAtlases.key(atlas) if memo is not None else None
    tree = memo.get(key) if key is not None else None
    if tree is not None:  # one group atlas serves every donor
        return {donor: tree for donor in check_donors(donors)}, True
    trees, group_atlas = _load_atlas_input(atlas, donors, data_dir)
    if memo is not None and group_atlas and trees:
        memo.put(key, next(iter(trees.values())))
    native_affines(trees, group_atlas, data_dir)
    return trees, group_atlas


def _load_atlas_input(atlas: AtlasInput, donors, data_dir=None) -> tuple[dict, bool]:
    from .atlas import coerce_atlas_to_dict

    info = atlas.info if atlas.has_info else None
    if isinstance(info, (list, tuple)):
        info = read_region_table(info)
    image = atlas.image
    if isinstance(image, list):
        image = tuple(image)
    elif isinstance(image, Mapping):
        image = {d: tuple(v) if isinstance(v, list) else v for d, v in image.items()}
    geometry = atlas.geometry
    if isinstance(geometry, list):
        geometry = tuple(geometry)
    elif isinstance(geometry, Mapping):
        geometry = {d: tuple(v) for d, v in geometry.items()}
    return coerce_atlas_to_dict(image, donors, atlas_info=info, data_dir=data_dir,
                                geometry=geometry, space=atlas.space)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def read_region_table(info) -> pd.DataFrame:
    """A region table (TSV/CSV, or a list of per-hemisphere TSVs) indexed by region index."""
    paths = info if isinstance(info, (list, tuple)) else [info]
    frames = []
    for path in paths:
        path = Path(path)
        frame = _read_table(path)
        column = "index" if "index" in frame.columns else "id" if "id" in frame.columns else None
        if column is None:
            raise BIDSInputError(f"The region table {path} has no 'index' column (columns: "
                                 f"{', '.join(map(str, frame.columns))}).")
        try:
            ids = pd.to_numeric(frame[column], errors="raise").astype(np.int64)
        except (ValueError, TypeError):
            raise BIDSInputError(f"The region table {path}: the '{column}' column must hold "
                                 "integers.") from None
        frames.append(frame.drop(columns=[column]).set_axis(pd.Index(ids, name="index")))
    table = pd.concat(frames) if len(frames) > 1 else frames[0]
    names = next((table[c] for c in ("name", "label") if c in table.columns), None)
    if table.index.has_duplicates and names is not None:
        # TemplateFlow's fsaverage tables list the medial wall once per hemisphere
        from .atlas import BACKGROUND
        repeated = table.index.duplicated(keep="first") & names.isin(BACKGROUND).to_numpy()
        table = table.loc[~repeated]
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()].unique().tolist()[:10]
        raise BIDSInputError(f"The region table {', '.join(map(str, paths))} lists index "
                             f"{dup} more than once.")
    return table


def check_region_table(info, labels, source: str) -> pd.DataFrame:
    """The region table of an atlas, checked against the labels present in its image.

    Every label of the image must be listed (else :class:`BIDSInputError`); listed regions
    absent from the image are dropped with a warning (background 0 silently).
    """
    table = read_region_table(info)
    labels = np.asarray(labels, dtype=np.int64)
    absent = np.setdiff1d(labels, table.index.to_numpy())
    shown = info if isinstance(info, str) else ", ".join(map(str, info))
    if len(absent):
        raise BIDSInputError(
            f"The region table {shown} does not match {source}: image label(s) "
            f"{absent[:20].tolist()}{' ...' if len(absent) > 20 else ''} have no row. Every "
            "label of the image needs a row (index, name[, hemisphere, structure]).")
    extra = np.setdiff1d(table.index.to_numpy(), labels)
    extra = extra[extra != 0]
    if len(extra):
        LGR.warning("The region table %s lists %d index(es) absent from %s (%s): ignored.",
                    shown, len(extra), source, extra[:20].tolist())
    return table.loc[labels]


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# the derivatives' writers, at their old address
from .derivatives import (BIDS_VERSION, BIDSIGNORE, CODE_URL, container_info,  # noqa: E402,F401
                          dataset_description, derivative_path, software_versions, write_json,
                          write_text, write_tsv)
