"""The processing options a multiverse grid may vary, and how each value is made canonical.

A thin view of :data:`ahba_app.options.OPTIONS` (the one declaration of every option): a grid
value goes through the option's own converter, after two checks a TOML file needs and the
command line does not (booleans must be true/false, numbers must be numbers).
"""

from __future__ import annotations

import warnings

from ..options import DEFAULTS, OPTIONS

#: Options a grid may vary (every processing option of ``get_expression_data``).
NAMES: tuple[str, ...] = tuple(OPTIONS)
#: Options that take None (written ``"none"`` in TOML).
NULLABLE = tuple(name for name, option in OPTIONS.items() if option.nullable)
#: Options whose values are true / false.
BOOLEANS = tuple(name for name, option in OPTIONS.items() if option.kind == "bool")


def canonical(name: str, value):
    """``value`` of option ``name`` checked and canonical; ``"none"`` (any case) is None for the
    options that take None. ValueError naming the option, the value and what is allowed."""
    option = OPTIONS.get(name)
    if option is None:
        raise ValueError(f"Unknown option {name!r}: options are {list(NAMES)}.")
    if option.nullable and (value is None or (isinstance(value, str)
                                              and value.lower() == "none")):
        return None
    if option.kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"Invalid {name}={value!r}: write true or false.")
    if option.kind == "number" and (isinstance(value, bool)
                                    or not isinstance(value, (int, float))):
        raise ValueError(f"Invalid {name}={value!r}: give a number"
                         + (" or 'none'." if option.nullable else "."))
    if option.kind == "choice" and not isinstance(value, str):
        raise ValueError(f"Invalid {name}={value!r}: choose one of "
                         f"{[v for v in option.accepted() if v is not None]}"
                         + (" or 'none'." if option.nullable else "."))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            converted = option.convert(value)
        except (TypeError, ValueError) as err:
            raise ValueError(str(err)) from None
    return tuple(converted) if option.kind == "donors" else converted


def defaults() -> dict:
    """Every option's default (abagen 0.1.3's), canonical."""
    return {name: canonical(name, DEFAULTS[name]) for name in NAMES}
