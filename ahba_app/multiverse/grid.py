"""Multiverse grids: which values of which processing options to cross.

A grid file is TOML with a ``[grid]`` table of option name -> list of values (a single value
fixes the option), plus optional ``name``, ``description`` and ``citations``; ``"none"`` stands
for None (TOML has no null)::

    name = "my-grid"
    [grid]
    ibf_threshold = [0, 0.25, 0.5]
    sample_norm = ["srs", "zscore", "none"]

A list is always a list of values: ``donors = [["9861", "10021"], "all"]`` crosses two donor
sets, ``donors = ["9861", "10021"]`` two single donors. Options the grid does not name keep
their value from ``base`` (the command line or preset;
abagen's defaults otherwise). Every value is checked and made canonical before anything runs
(aliases resolved: ``"srs"`` is ``"scaled_robust_sigmoid"``), and the combinations that abagen
refuses or silently turns into another pipeline are dropped and counted with the reason
(:data:`RULES`), so that every pipeline left runs and is distinct.

Each pipeline has a stable id: the first 16 hex digits of the SHA-256 of the canonical JSON of
the options whose value differs from abagen's default (so the default pipeline's id is that of
``{}``, and adding an option with a default changes no id).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Mapping

from . import _options

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["Grid", "GridError", "Pipeline", "RULES", "Rule", "available_grids",
           "grid_from_dict", "grid_path", "load_grid", "parse_grid", "pipeline_id"]

#: Bundled grids are the ``workflows/multiverse-*.toml`` files (shipped as ``ahba_app/presets``).
GRID_PREFIX = "multiverse-"


class GridError(ValueError):
    """A grid that cannot be read or names unknown options or values."""


# ---------------------------------------------------------------------------------------------
# combinations that abagen refuses or silently changes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A combination of option values that is not a pipeline of its own.

    ``options`` are the options it looks at; ``reason(values, context)`` returns why the
    combination is dropped (one sentence), or None to keep it. ``context`` holds facts about the
    run that are not options (``group_atlas``: whether the atlas is a group (MNI) atlas).
    """

    name: str
    options: tuple[str, ...]
    reason: Callable[[Mapping, Mapping], str | None]


def _aggregate_only(values: Mapping, context: Mapping) -> str | None:
    from ..probes import AGGREGATE_ONLY

    method, mode = values["probe_selection"], values["donor_probes"]
    if method in AGGREGATE_ONLY and mode != "aggregate":
        return (f"probe_selection={method!r} chooses probes on all donors together: abagen "
                f"replaces donor_probes={mode!r} by 'aggregate' (the same pipeline as "
                "donor_probes='aggregate')")
    return None


def _diff_stability_donors(values: Mapping, context: Mapping) -> str | None:
    if values["probe_selection"] == "diff_stability" and len(values["donors"]) < 2:
        return ("probe_selection='diff_stability' compares donors: abagen refuses it with "
                f"one donor (donors={list(values['donors'])})")
    return None


def _mirror_native(values: Mapping, context: Mapping) -> str | None:
    if values["lr_mirror"] is not None and not context.get("group_atlas", True):
        return (f"lr_mirror={values['lr_mirror']!r} mirrors across x = 0, the midline only in "
                "MNI space: refused with a donor-native atlas")
    return None


#: Every rule, in the order they are applied (a combination is counted under the first that
#: drops it).
RULES: tuple[Rule, ...] = (
    Rule("aggregate_only", ("probe_selection", "donor_probes"), _aggregate_only),
    Rule("diff_stability_donors", ("probe_selection", "donors"), _diff_stability_donors),
    Rule("mirror_native", ("lr_mirror",), _mirror_native),
)


# ---------------------------------------------------------------------------------------------
# pipeline ids
# ---------------------------------------------------------------------------------------------
def _json_value(value):
    return list(value) if isinstance(value, tuple) else value


def pipeline_id(options: Mapping, defaults: Mapping | None = None) -> str:
    """The stable id of a pipeline given its canonical options (every option, or only those
    that differ from abagen's defaults: the id is the same). ``defaults``: the canonical
    defaults (:func:`ahba_app.multiverse._options.defaults`), when the caller has them."""
    defaults = _options.defaults() if defaults is None else defaults
    differing = {name: _json_value(value) for name, value in sorted(options.items())
                 if name not in defaults or defaults[name] != value}
    text = json.dumps(differing, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Pipeline:
    """One combination of the grid: its id and every option's canonical value."""

    id: str
    options: Mapping

    def kwargs(self) -> dict:
        """The options as ``get_expression_data`` keywords (donors as a list)."""
        return {name: list(value) if name == "donors" else value
                for name, value in self.options.items()}


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """The options a multiverse crosses (``axes``: option -> canonical values, in file order)
    and the values of the others (``base``).

    ``context`` holds facts about the run that rules need (``group_atlas``).
    """

    axes: dict
    base: dict
    name: str = "custom"
    description: str = ""
    citations: tuple[str, ...] = ()
    source: str | None = None
    context: dict = field(default_factory=lambda: {"group_atlas": True})

    @property
    def n_combinations(self) -> int:
        """Every combination of the axes' values, valid or not."""
        return math.prod(len(values) for values in self.axes.values())

    def reason(self, values: Mapping) -> str | None:
        """Why the combination ``values`` (every option) is dropped, or None to keep it."""
        for rule in RULES:
            reason = rule.reason(values, self.context)
            if reason is not None:
                return reason
        return None

    def dropped(self) -> Counter:
        """reason -> number of combinations dropped for it (computed without enumerating the
        options that no rule looks at)."""
        watched = {name for rule in RULES for name in rule.options}
        involved = [name for name in self.axes if name in watched]
        others = math.prod(len(v) for n, v in self.axes.items() if n not in involved)
        counts: Counter = Counter()
        for combo in itertools.product(*(self.axes[name] for name in involved)):
            reason = self.reason(dict(self.base, **dict(zip(involved, combo))))
            if reason is not None:
                counts[reason] += others
        return counts

    @property
    def n_pipelines(self) -> int:
        """How many pipelines run (combinations not dropped)."""
        return self.n_combinations - sum(self.dropped().values())

    def pipelines(self) -> Iterator[Pipeline]:
        """Every pipeline kept, in the order of the axes (the last axis varies fastest)."""
        names = list(self.axes)
        for combo in itertools.product(*self.axes.values()):
            yield from self.keep(dict(self.base, **dict(zip(names, combo))))

    def keep(self, values: Mapping) -> Iterator[Pipeline]:
        """The pipeline of the combination ``values`` (every option), unless it is dropped."""
        if self.reason(values) is None:
            yield Pipeline(pipeline_id(values, self._defaults), values)

    def __post_init__(self):
        self._defaults = _options.defaults()

    def as_dict(self) -> dict:
        """The grid as JSON-able data (what the Nipype engine's nodes receive):
        :func:`grid_from_dict` gives it back. Only what decides the pipelines and their
        results is kept (not the name, description or citations)."""
        return {"axes": {name: [_json_value(v) for v in values]
                         for name, values in self.axes.items()},
                "base": {name: _json_value(value) for name, value in self.base.items()},
                "context": dict(self.context)}

    def summary(self) -> str:
        """What the grid holds, in a few lines (for the log before a run)."""
        lines = [f"Multiverse grid {self.name!r}: {self.n_combinations:,} combinations of "
                 f"{len(self.axes)} option(s), {self.n_pipelines:,} pipelines."]
        for reason, count in sorted(self.dropped().items()):
            lines.append(f"  dropped {count:,}: {reason}")
        return "\n".join(lines)


def _canonical_axis(name: str, values, where: str) -> tuple:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise GridError(f"{where}: {name} lists no value; give at least one (or leave the "
                        "option out to keep its value from the command line or preset).")
    out, spelled = [], []
    for raw in values:
        try:
            value = _options.canonical(name, raw)
        except ValueError as err:
            raise GridError(f"{where}: {err}") from None
        if value in out:
            first = spelled[out.index(value)]
            raise GridError(f"{where}: {name} lists {first!r} and {raw!r}, which are the same "
                            "value; list it once.")
        spelled.append(raw)
        out.append(value)
    return tuple(out)


def parse_grid(data: Mapping, *, base: Mapping | None = None, source: str | None = None,
               group_atlas: bool = True) -> Grid:
    """A :class:`Grid` from a grid file's parsed TOML (``data``) and the other options' values
    (``base``; abagen's defaults for those not given). Raises :class:`GridError` naming the
    file, the option and the value."""
    where = f"Grid file {source}" if source else "The grid"
    table = data.get("grid")
    if not isinstance(table, Mapping):
        raise GridError(f"{where} has no [grid] table: add one mapping option names to lists "
                        "of values, e.g. [grid] / sample_norm = [\"srs\", \"zscore\"].")
    if not table:
        raise GridError(f"{where}: the [grid] table is empty; name at least one option and "
                        "its values.")
    unknown = sorted(set(table) - set(_options.NAMES))
    if unknown:
        raise GridError(f"{where} names unknown option(s) {unknown}: options are "
                        f"{list(_options.NAMES)}.")
    values = _options.defaults()
    for name, value in (base or {}).items():
        try:
            values[name] = _options.canonical(name, value)
        except ValueError as err:
            raise GridError(f"{where}: the value outside the grid is invalid: {err}") from None
    axes = {name: _canonical_axis(name, table[name], where) for name in table}
    citations = data.get("citations", [])
    citations = [citations] if isinstance(citations, str) else citations
    if not isinstance(citations, (list, tuple)) or not all(isinstance(c, str) for c in citations):
        raise GridError(f"{where}: citations must be a text or a list of texts (e.g. "
                        f"citations = [\"Markello et al. 2021\"]), not {citations!r}.")
    grid = Grid(axes=axes, base={n: v for n, v in values.items() if n not in axes},
                name=str(data.get("name") or "custom"),
                description=str(data.get("description", "")),
                citations=tuple(citations),
                source=source, context={"group_atlas": group_atlas})
    if grid.n_pipelines == 0:
        reasons = "; ".join(grid.dropped())
        raise GridError(f"{where} leaves no pipeline to run: every combination is dropped "
                        f"({reasons}).")
    return grid


def grid_from_dict(data: Mapping) -> Grid:
    """The :class:`Grid` of :meth:`Grid.as_dict`'s data (values made canonical again)."""
    axes = {name: tuple(_options.canonical(name, v) for v in values)
            for name, values in data["axes"].items()}
    base = {name: _options.canonical(name, value) for name, value in data["base"].items()}
    return Grid(axes=axes, base=base, context=dict(data.get("context", {})))


def _bundled_folder() -> Path:
    return Path(str(resources.files("ahba_app").joinpath("presets")))


def available_grids() -> list[str]:
    """Names of the bundled grids (``workflows/multiverse-*.toml``), sorted."""
    return sorted(p.name[:-5] for p in _bundled_folder().glob(f"{GRID_PREFIX}*.toml"))


def grid_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a bundled grid given by name (with or without ``multiverse-``), or
    ``name_or_path`` itself when it is a file."""
    text = os.fspath(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate
    for name in (text, GRID_PREFIX + text):
        shipped = _bundled_folder() / f"{name}.toml"
        if shipped.is_file():
            return shipped
    raise GridError(f"Unknown multiverse grid {text!r}: give the path of a TOML file with a "
                    f"[grid] table, or one of {available_grids()}.")


def load_grid(name_or_path: str | os.PathLike, *, base: Mapping | None = None,
              group_atlas: bool = True) -> Grid:
    """Read a grid file (or a bundled grid by name); see :func:`parse_grid`."""
    path = grid_path(name_or_path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise GridError(f"Cannot read grid file {path}: {err}") from None
    return parse_grid(data, base=base, source=str(path), group_atlas=group_atlas)
