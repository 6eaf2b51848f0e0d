"""Atlases and surfaces from a TemplateFlow home, offline.

TemplateFlow (https://www.templateflow.org) is where fMRIPrep, MRIQC, XCP-D and nilearn users
keep their templates and atlases; its Python client indexes the folder named by
``$TEMPLATEFLOW_HOME``. ahba-app reads that folder with the client and never downloads: a file
that the index names but that is absent or an empty placeholder (what the client's bundled
skeleton holds before a download) is an error naming the file and the command that fetches it
on a machine with internet access.

- :func:`resolve_atlas` turns ``--atlas Schaefer2018 --atlas-desc 400Parcels7Networks
  [--space MNI152NLin6Asym] [--res 1] [--den 41k]`` into an :class:`ahba_app.bids.AtlasInput`
  (image, region table, and for surfaces the geometry of the same space and density);
- :func:`find_geometry` gives the (left, right) surfaces of a space and density, which
  :func:`add_geometry` gives to atlases of the input folder that came without them.

fsaverage meshes are nested (each density's vertices are the first vertices of the next), so an
fsaverage atlas is available at every density below the one TemplateFlow has: ``--space
fsaverage --den 41k`` (fsaverage6) reads the 164k label files and keeps their first 40,962
vertices (see :func:`ahba_app.atlas.check_atlas`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .bids import AtlasInput, BIDSInputError, _space_key

__all__ = ["TemplateFlowError", "add_geometry", "choose_atlases", "find_geometry",
           "resolve_atlas", "templateflow_home", "DEFAULT_SPACE"]

#: The space of a TemplateFlow atlas when ``--space`` is not given (the space of the bundled
#: Desikan-Killiany volume and of FSL's MNI152, where AHBA's corrected coordinates lie).
DEFAULT_SPACE = "MNI152NLin6Asym"
#: Surface suffixes to use as geometry, in order of preference, per template.
_GEOMETRY = {"fslr": ("midthickness", "pial", "white"),
             "fsaverage": ("pial", "midthickness", "white")}
_VOLUME_EXT = [".nii.gz", ".nii"]
_SURFACE_EXT = [".label.gii", ".label.gii.gz"]
_CIFTI_EXT = [".dlabel.nii"]
#: fsaverage densities, coarse to fine (TemplateFlow's names).
_FSAVERAGE_ORDER = ("1k", "3k", "10k", "41k", "164k")


class TemplateFlowError(BIDSInputError):
    """A TemplateFlow home, atlas or file that cannot be used (the message says why).

    ``exit_code`` is the command line's: 66 (an input missing), or 18 when ``--atlas`` named
    nothing that exists.
    """

    def __init__(self, message: str, exit_code: int = 66):
        super().__init__(message)
        self.exit_code = exit_code


def templateflow_home(environ=None) -> Path:
    """``$TEMPLATEFLOW_HOME``, checked: set, an existing folder, not empty."""
    environ = os.environ if environ is None else environ
    value = environ.get("TEMPLATEFLOW_HOME")
    if not value:
        raise TemplateFlowError(
            "TEMPLATEFLOW_HOME is not set: point it at a TemplateFlow folder holding the atlas "
            "(on a machine with internet access: pip install templateflow, then "
            "TEMPLATEFLOW_HOME=/path/to/templateflow python -c \"from templateflow import api; "
            "api.get('MNI152NLin6Asym', atlas='Schaefer2018')\"; in a container, bind that "
            "folder and set TEMPLATEFLOW_HOME to where it is mounted).")
    home = Path(value)
    if not home.is_dir() or not any(home.iterdir()):
        raise TemplateFlowError(
            f"TEMPLATEFLOW_HOME={home} is {'empty' if home.is_dir() else 'not a folder'}: "
            "ahba-app never downloads at run time. Fill it on a machine with internet access "
            "(pip install templateflow; TEMPLATEFLOW_HOME=... python -c \"from templateflow "
            "import api; api.get(...)\") and copy or bind it here.")
    return home


def _client(home: Path):
    """The TemplateFlow client over ``home``, with nothing fetched or updated.

    Importing ``templateflow`` sets up the client's default cache from ``$TEMPLATEFLOW_HOME``;
    :func:`templateflow_home` has checked that it names a filled folder, so the import changes
    nothing on disk and opens no connection.
    """
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=home, autoupdate=False, use_datalad=False)


def _ls(client, template: str, **query) -> list[Path]:
    try:
        return sorted(client.ls(template, **query))
    except Exception as err:  # pybids could not index the home, or the query is malformed
        raise TemplateFlowError(f"TemplateFlow ({client.cache.config.root}) could not be "
                                f"searched for {template} {query}: {err}") from None


def _fetch_hint(template: str, query: dict) -> str:
    args = ", ".join([repr(template)] + [f"{k}={v!r}" for k, v in query.items()])
    return ("on a machine with internet access run TEMPLATEFLOW_HOME=/path/to/templateflow "
            f"python -c \"from templateflow import api; api.get({args})\", then copy or bind "
            "that folder here (ahba-app never downloads at run time)")


def _present(paths: list[Path], template: str, query: dict) -> list[str]:
    """The paths as strings; an error naming the first one absent or empty (a placeholder)."""
    for path in paths:
        if not path.is_file() or path.stat().st_size == 0:
            state = "an empty placeholder" if path.is_file() else "absent"
            raise TemplateFlowError(f"TemplateFlow file {path} is {state}: it has not been "
                                    f"downloaded. To get it, {_fetch_hint(template, query)}.")
    return [str(p) for p in paths]


def _entities(path: Path) -> dict:
    from .bids import parse_entities

    return parse_entities(path)


def _templates(home: Path) -> list[str]:
    return sorted(p.name[4:] for p in home.glob("tpl-*") if p.is_dir())


def _schaefer_desc(desc: str | None) -> dict:
    """``400Parcels7Networks`` -> ``{'scale': '400', 'seg': '7n'}`` (the entities TemplateFlow
    uses for Schaefer2018 on fsaverage); {} for other descs."""
    match = re.fullmatch(r"(\d+)Parcels(\d+)Networks", desc or "")
    return {"scale": match.group(1), "seg": f"{match.group(2)}n"} if match else {}


def _matching_images(client, template, atlas, desc, extensions) -> list[Path]:
    """Atlas images of ``template`` with ``atlas`` and ``desc`` (or its seg/scale form)."""
    found = _ls(client, template, atlas=atlas, suffix="dseg", extension=extensions)
    if desc is None:
        return found
    by_desc = [p for p in found if _entities(p).get("desc") == desc]
    if by_desc:
        return by_desc
    alt = _schaefer_desc(desc)
    return [p for p in found if alt and all(_entities(p).get(k) == v for k, v in alt.items())]


def _describe_choices(paths: list[Path], keys=("desc", "seg", "scale", "res", "den")) -> str:
    seen: dict = {}
    for path in paths:
        ents = _entities(path)
        for key in keys:
            if key in ents:
                seen.setdefault(key, set()).add(ents[key])
    return "; ".join(f"{k}: {', '.join(sorted(v, key=lambda s: (len(s), s)))}"
                     for k, v in seen.items()) or "none"


def resolve_atlas(atlas: str, desc: str | None = None, space: str | None = None,
                  res=None, den: str | None = None, *, environ=None) -> AtlasInput:
    """The TemplateFlow atlas named by these entities, as an :class:`AtlasInput`.

    ``space`` is a TemplateFlow template (default :data:`DEFAULT_SPACE`; ``fsLR`` and
    ``fsaverage`` are surface spaces, where ``den`` picks the density); ``res`` is
    TemplateFlow's resolution index (1 = 1 mm for MNI152NLin6Asym; default: the finest there
    is); ``desc`` tells the variants of an atlas apart (for Schaefer2018 on fsaverage,
    ``400Parcels7Networks`` also finds the files named ``seg-7n_scale-400``). Errors
    (:class:`TemplateFlowError`) name what was looked for and what the home holds.
    """
    home = templateflow_home(environ)
    space = space or DEFAULT_SPACE
    templates = _templates(home)
    match = {t.lower(): t for t in templates}.get(space.lower())
    if match is None:
        raise TemplateFlowError(f"TEMPLATEFLOW_HOME={home} has no template {space!r} (it has: "
                                f"{', '.join(templates) or 'none'}). To get it, "
                                f"{_fetch_hint(space, {'atlas': atlas})}.")
    template = match
    client = _client(home)
    key = _space_key(template, den)
    surface = key in ("fslr",) or (key or "").startswith("fsaverage")
    if not surface:
        return _volume_atlas(client, template, atlas, desc, res)
    return _surface_atlas(client, template, atlas, desc, den)


def _one_of(paths: list[Path], what: str, key: str) -> list[Path]:
    values = sorted({_entities(p).get(key) for p in paths}, key=lambda v: (v is None, str(v)))
    if len(values) > 1:
        raise TemplateFlowError(f"{what} exists in several variants ({key}: "
                                f"{', '.join(map(str, values))}): choose one "
                                f"({'--atlas-desc' if key == 'desc' else '--' + key}).")
    return paths


def _volume_atlas(client, template, atlas, desc, res) -> AtlasInput:
    what = f"TemplateFlow atlas-{atlas}{f' desc-{desc}' if desc else ''} in {template}"
    found = _matching_images(client, template, atlas, desc, _VOLUME_EXT)
    if not found:
        others = _ls(client, template, atlas=atlas, suffix="dseg")
        raise TemplateFlowError(
            f"{what} is not in TEMPLATEFLOW_HOME={client.cache.config.root} "
            f"({'its variants: ' + _describe_choices(others) if others else 'no such atlas there'}"
            f"). To get it, {_fetch_hint(template, _query(atlas, desc, res=res))}.")
    _one_of(found, what, "desc")
    if res is not None:
        wanted = int(str(res).lstrip("0") or 0) if str(res).isdigit() else None
        chosen = [p for p in found if _entities(p).get("res") and
                  int(_entities(p)["res"]) == wanted]
        if not chosen:
            raise TemplateFlowError(
                f"{what} has no resolution {res} (res: "
                f"{', '.join(sorted({_entities(p).get('res', '-') for p in found}))}). To get "
                f"it, {_fetch_hint(template, _query(atlas, desc, res=res))}.")
        found = chosen
    else:  # the finest there is
        found = sorted(found, key=lambda p: int(_entities(p).get("res", "0")))[:1]
    image = found[0]
    ents = _entities(image)
    query = _query(atlas, ents.get("desc"), res=ents.get("res"))
    _present([image], template, query)
    entities = {k: v for k, v in ents.items() if k not in ("suffix", "extension")}
    out = AtlasInput(label=atlas, entities=entities, kind="volumetric", image=str(image))
    return _with_table(client, out, template, ents)


def _query(atlas, desc=None, **extra) -> dict:
    query = {"atlas": atlas}
    if desc:
        query["desc"] = desc
    query.update({k: (int(v) if k == "res" and str(v).isdigit() else v)
                  for k, v in extra.items() if v is not None})
    if "res" in query:
        query["resolution"] = query.pop("res")
    if "den" in query:
        query["density"] = query.pop("den")
    query["suffix"] = "dseg"
    return query


def _with_table(client, out: AtlasInput, template: str, ents: dict) -> AtlasInput:
    """The atlas's region table: the most specific ``_dseg.tsv`` sharing its entities."""
    from .bids import _region_table_columns

    tables = _ls(client, template, atlas=ents["atlas"], suffix="dseg", extension=[".tsv"])
    want = {k: v for k, v in ents.items() if k not in ("suffix", "extension", "tpl", "hemi")}
    best, best_n = None, -1
    for path in tables:
        have = {k: v for k, v in _entities(path).items()
                if k not in ("suffix", "extension", "tpl", "hemi")}
        if all(want.get(k) == v for k, v in have.items()) and len(have) > best_n:
            best, best_n = path, len(have)
    if best is not None:
        _present([best], template, _query(ents["atlas"], ents.get("desc")))
        out.info = str(best)
        cols = _region_table_columns(best)
        out.has_info = "hemisphere" in cols and "structure" in cols
    return out


def _surface_atlas(client, template, atlas, desc, den) -> AtlasInput:
    fsaverage = template.lower() == "fsaverage"
    what = (f"TemplateFlow atlas-{atlas}{f' desc-{desc}' if desc else ''} in {template}"
            f"{f' den-{den}' if den else ''}")
    found = _matching_images(client, template, atlas, desc, _SURFACE_EXT + _CIFTI_EXT)
    _one_of(found, what, "desc")
    dens = sorted({_entities(p).get("den") for p in found if _entities(p).get("den")},
                  key=_density_rank)
    if den is None and len(dens) > 1:
        raise TemplateFlowError(f"{what} exists at several densities ({', '.join(dens)}): "
                                "choose one with --den.")
    source_den = den or (dens[0] if dens else None)
    if den is not None and den not in dens and fsaverage:
        finer = [d for d in dens if _density_rank(d) > _density_rank(den)]
        if finer and _density_rank(den) < len(_FSAVERAGE_ORDER):
            source_den = finer[0]  # nested meshes: the coarser one is a prefix of it
    chosen = [p for p in found if _entities(p).get("den") == source_den]
    if not chosen:
        raise TemplateFlowError(
            f"{what} is not in TEMPLATEFLOW_HOME={client.cache.config.root} ("
            f"{'its variants: ' + _describe_choices(found) if found else 'no such atlas there'}"
            f"). To get it, {_fetch_hint(template, _query(atlas, desc, den=den))}.")
    cifti = [p for p in chosen if str(p).endswith(tuple(_CIFTI_EXT))]
    ents = _entities(chosen[0])
    query = _query(atlas, ents.get("desc"), den=source_den)
    for key in ("seg", "scale"):
        if key in ents:
            query[key] = ents[key]
    if cifti:
        image: object = _present(cifti[:1], template, query)[0]
        kind = "cifti"
    else:
        by_hemi = {_entities(p).get("hemi"): p for p in chosen}
        if not {"L", "R"} <= set(by_hemi):
            raise TemplateFlowError(f"{what}: TemplateFlow holds only "
                                    f"{', '.join(p.name for p in chosen)}; a surface atlas "
                                    "needs both hemispheres (hemi-L and hemi-R).")
        image = _present([by_hemi["L"], by_hemi["R"]], template, query)
        kind = "surface"
    target_den = den or source_den
    geometry = find_geometry(template, target_den, client=client)
    if geometry is None:
        raise TemplateFlowError(
            f"{what}: TEMPLATEFLOW_HOME has no surfaces of {template} den-{target_den} "
            f"(tried {', '.join(_GEOMETRY['fsaverage' if fsaverage else 'fslr'])}). To get "
            f"them, {_fetch_hint(template, {'density': target_den, 'suffix': _GEOMETRY['fsaverage' if fsaverage else 'fslr'][0]})}.")
    entities = {k: v for k, v in ents.items() if k not in ("suffix", "extension", "hemi")}
    entities["den"] = target_den
    out = AtlasInput(label=atlas, entities=entities, kind=kind, image=image,
                     geometry=geometry, space=_space_key(template, target_den))
    return _with_table(client, out, template, ents)


def _density_rank(den: str | None) -> int:
    if den in _FSAVERAGE_ORDER:
        return _FSAVERAGE_ORDER.index(den)
    digits = re.match(r"\d+", den or "")
    return 100 + int(digits.group()) if digits else 1000


def find_geometry(template: str, den: str | None, *, client=None, environ=None
                  ) -> list[str] | None:
    """The (left, right) surfaces of ``template`` at density ``den`` in the TemplateFlow home
    (midthickness first for fsLR, pial first for fsaverage), or None when it has none."""
    if client is None:
        client = _client(templateflow_home(environ))
    kind = "fsaverage" if template.lower().startswith("fsaverage") else "fslr"
    name = {t.lower(): t for t in _templates(Path(client.cache.config.root))}.get(
        "fsaverage" if kind == "fsaverage" else "fslr")
    if name is None:
        return None
    for suffix in _GEOMETRY[kind]:
        query = {"suffix": suffix, "extension": [".surf.gii", ".surf.gii.gz"]}
        if den:
            query["density"] = den
        found = [p for p in _ls(client, name, **query)
                 if "space" not in _entities(p) and "desc" not in _entities(p)]
        by_hemi = {_entities(p).get("hemi"): p for p in found}
        if {"L", "R"} <= set(by_hemi):
            return _present([by_hemi["L"], by_hemi["R"]], name,
                            dict(hemi=None, density=den, suffix=suffix))
    return None


_FSAVERAGE_MESHES = {"fsaverage3": "1k", "fsaverage4": "3k", "fsaverage5": "10k",
                     "fsaverage6": "41k", "fsaverage": "164k"}


def add_geometry(atlas: AtlasInput, *, environ=None) -> AtlasInput:
    """Give a surface or CIFTI atlas of the input folder that has no surfaces beside it the
    surfaces of its space and density from the TemplateFlow home (unchanged when it has
    surfaces, is not on fsLR / fsaverage, or the home has none)."""
    if atlas.kind not in ("surface", "cifti") or atlas.geometry:
        return atlas
    template = atlas.template or ("fsLR" if atlas.kind == "cifti" else None)
    if template is None:
        return atlas
    key = _space_key(template, atlas.entities.get("den")) or ""
    den = atlas.entities.get("den")
    if key.startswith("fsaverage"):
        den = den or _FSAVERAGE_MESHES.get(template.lower())
        template = "fsaverage"
    elif key == "fslr":
        den = den or "32k"
        template = "fsLR"
    else:
        return atlas
    geometry = find_geometry(template, den, environ=environ)
    if geometry is not None:
        atlas.geometry = geometry
        atlas.space = atlas.space or _space_key(template, den)
    return atlas


def _agrees(atlas: AtlasInput, desc, space, res, den) -> bool:
    """Whether an input-folder atlas agrees with the entities asked for: an entity its name
    lacks does not count against it."""
    ents = atlas.entities
    if desc is not None and ("desc" in ents or "seg" in ents or "scale" in ents):
        alt = _schaefer_desc(desc)
        if ents.get("desc") != desc and not (alt and all(ents.get(k) == v
                                                         for k, v in alt.items())):
            return False
    if space is not None and atlas.template and atlas.template.lower() != space.lower():
        return False
    if res is not None and "res" in ents and \
            str(ents["res"]).lstrip("0") != str(res).lstrip("0"):
        return False
    if den is not None and "den" in ents and ents["den"] != den:
        return False
    return True


def choose_atlases(found: list[AtlasInput], wanted=None, *, desc=None, space=None, res=None,
                   den=None, environ=None) -> list[AtlasInput]:
    """The atlases of a run: those of the input folder named by ``wanted`` (``--atlas``; all
    when None), and for each label the input folder does not have (with the entities given),
    the TemplateFlow atlas of that label (:func:`resolve_atlas`).

    Surface and CIFTI atlases of the input folder without surfaces beside them get those of the
    TemplateFlow home when ``$TEMPLATEFLOW_HOME`` is set (:func:`add_geometry`).
    """
    environ = os.environ if environ is None else environ
    chosen: list[AtlasInput] = []
    if not wanted:
        if any(v is not None for v in (desc, space, res, den)):
            raise TemplateFlowError("--atlas-desc, --space, --res and --den select a "
                                    "TemplateFlow atlas: give its name with --atlas (e.g. "
                                    "--atlas Schaefer2018).")
        chosen = list(found)
    else:
        for label in wanted:
            key = label.lower().removeprefix("atlas-")
            local = [a for a in found if key in (a.label.lower(), a.name.lower())
                     and _agrees(a, desc, space, res, den)]
            if not local and not environ.get("TEMPLATEFLOW_HOME"):
                shown = ", ".join(sorted({a.name for a in found})) or "none"
                raise TemplateFlowError(
                    f"--atlas {label}: no such atlas in the input folder (it has: {shown}), and "
                    "TEMPLATEFLOW_HOME is not set, so TemplateFlow's atlases cannot be looked "
                    "up. Set it to a TemplateFlow folder holding the atlas.", exit_code=18)
            chosen += local or [resolve_atlas(label.removeprefix("atlas-"), desc, space, res,
                                              den, environ=environ)]
    if environ.get("TEMPLATEFLOW_HOME"):
        for atlas in chosen:
            if atlas.kind in ("surface", "cifti") and not atlas.geometry:
                add_geometry(atlas, environ=environ)
    keys = [a.key for a in chosen]
    clashes = sorted({k for k in keys if keys.count(k) > 1})
    if clashes:
        raise TemplateFlowError(f"Several atlases would write outputs named "
                                f"{', '.join(clashes)}: name each once with --atlas.")
    return chosen
