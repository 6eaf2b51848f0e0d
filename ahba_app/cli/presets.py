"""Named parameter sets (``workflows/*.toml``, shipped as ``ahba_app/presets``) for ``--preset``.

A preset file holds ``name``, ``description``, ``citations`` (keys of the report's reference
table) and a ``[parameters]`` table with ``get_expression_data``'s option names. The string
``"none"`` stands for None (TOML has no null). Nothing here imports Nipype or touches the
network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..options import NAMES

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["PARAMETERS", "Preset", "PresetError", "available_presets", "load_preset",
           "preset_path"]

#: Option names a preset may set (``get_expression_data``'s, plus ahba-app's extension).
PARAMETERS = NAMES


class PresetError(ValueError):
    """A preset that cannot be found or read."""


@dataclass(frozen=True)
class Preset:
    """One parameter set: its name, description, citation keys and the parameters it sets."""

    name: str
    description: str = ""
    citations: tuple[str, ...] = ()
    parameters: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def label(self) -> str:
        """The name as a BIDS label (letters and digits only): ``abagen-defaults`` ->
        ``abagendefaults``."""
        return "".join(ch for ch in self.name if ch.isalnum())


def _preset_folder() -> Path:
    return Path(str(resources.files("ahba_app").joinpath("presets")))


def available_presets() -> list[str]:
    """Names of the presets shipped with ahba-app, sorted."""
    folder = _preset_folder()
    if not folder.is_dir():
        return []
    # multiverse-*.toml files there are grids for --multiverse (ahba_app.multiverse), not presets
    return sorted(p.name[:-5] for p in folder.glob("*.toml")
                  if not p.name.startswith("multiverse-"))


def preset_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a shipped preset given by name, or ``name_or_path`` itself when it is a file."""
    text = os.fspath(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate
    shipped = _preset_folder() / f"{text}.toml"
    if shipped.is_file():
        return shipped
    raise PresetError(f"Unknown preset {text!r}: give one of {available_presets()} or the path "
                      "of a TOML file with a [parameters] table.")


def _none(value):
    return None if isinstance(value, str) and value.lower() == "none" else value


def load_preset(name_or_path: str | os.PathLike) -> Preset:
    """Read a preset by name or path; ``"none"`` values become None.

    Raises :class:`PresetError` naming the file for unknown names, unreadable TOML, or
    parameters that are not options of ahba-app.
    """
    path = preset_path(name_or_path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise PresetError(f"Cannot read preset file {path}: {err}") from None
    params = data.get("parameters", {})
    if "grid" in data and "parameters" not in data:
        raise PresetError(f"{path} is a multiverse grid (a [grid] table), not a preset: use it "
                          "with --multiverse.")
    if not isinstance(params, dict):
        raise PresetError(f"Preset file {path}: [parameters] must be a table of options.")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise PresetError(f"Preset file {path} sets unknown option(s) {unknown}: known options "
                          f"are {list(PARAMETERS)}.")
    citations = data.get("citations", [])
    if isinstance(citations, str):
        citations = [citations]
    name = str(data.get("name") or path.name.removesuffix(".toml"))
    return Preset(name=name, description=str(data.get("description", "")),
                  citations=tuple(str(c) for c in citations),
                  parameters={key: _none(value) for key, value in params.items()},
                  path=str(path))
