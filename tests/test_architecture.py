"""The shape of the package (issue #13): imports point one way, each option's default and choices
are written once, stage modules keep no process-wide state, and the engine the Python API runs
writes no file it was not asked to.

These tests read the source (``ast``) or run the code; they pass or fail on what the package is,
never on timings.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import ahba_app
from ahba_app import options

PACKAGE = Path(ahba_app.__file__).parent
#: The pure core: functions over pandas / numpy objects, their registries and the engine.
STAGE_MODULES = ("options", "donors", "geometry", "grayordinates", "atlas", "matching", "matrix",
                 "samples", "probes", "exact", "normalize", "aggregate", "correct", "genes",
                 "summary", "stages", "pipeline")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _tree(path: Path) -> ast.Module:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):  # imports made only for type checkers are not imports
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    return tree


def _imports(name: str, path: Path, modules) -> set[str]:
    """The package's modules that ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            base = ".".join(base + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a package's own __init__ (re-exports) and a module's parents are not edges
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _cycles(graph: dict) -> list[list[str]]:
    """Import cycles of ``graph`` (module -> modules it imports), each as a closed path."""
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_cycle():
    """Walking every import of the package, at the top of a module or inside a function (the
    options table names the stages' registries and reads them by name when asked, so that
    stages can take their defaults from it): no module reaches itself again."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) - {"ahba_app"} for name, path in modules.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    # the walk sees imports at the top and inside functions (else the check would be vacuous)
    assert "ahba_app.geometry" in graph["ahba_app.atlas"]
    assert "ahba_app.atlas" in graph["ahba_app.bids"]  # inside _load_atlas_input
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_each_stage_module_imports_alone(module):
    """In a fresh interpreter, importing the module first works (no order it depends on)."""
    code = f"import ahba_app.{module}"
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------------------------
# one default, one list of choices
# --------------------------------------------------------------------------------------------
def test_each_default_is_written_once():
    """No function of the package spells an option's default again: a parameter named like an
    option takes its default from ``options.DEFAULTS`` (None, meaning 'not given', aside)."""
    written = []
    for name, path in _modules().items():
        if name == "ahba_app.options":
            continue
        for node in ast.walk(_tree(path)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                option = options.OPTIONS.get(arg.arg)
                if (option is None or option.default is None
                        or not isinstance(default, ast.Constant)):
                    continue
                if type(default.value) is type(option.default) and \
                        default.value == option.default:
                    written.append(f"{path.relative_to(PACKAGE.parent)}:{default.lineno} "
                                   f"{node.name}({arg.arg}={default.value!r})")
    assert not written, written
    # and the table's defaults do reach the signatures
    import inspect

    from ahba_app import fetch, pipeline, reporting

    assert inspect.signature(fetch.fetch_microarray).parameters["donors"].default == \
        options.DEFAULTS["donors"]
    assert inspect.signature(pipeline.gene_stability).parameters["agg_metric"].default == \
        options.DEFAULTS["agg_metric"]
    assert inspect.signature(reporting.Report).parameters["tolerance"].default == \
        options.DEFAULTS["tolerance"]


def test_each_list_of_choices_is_written_once():
    """An option's values are listed by its stage's registry (and described, one text per
    value, by the report's tables, which tests/test_report.py keeps equal to the registries):
    no other module writes them out again."""
    sets = {}
    for name, option in options.OPTIONS.items():
        if option.kind == "choice":
            sets.setdefault(frozenset(v for v in option.choices() if v is not None), name)
    written = []
    for name, path in _modules().items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = node.keys
            else:
                continue
            if len(items) < 2 or not all(isinstance(i, ast.Constant) for i in items):
                continue
            option = sets.get(frozenset(i.value for i in items if i.value is not None))
            if option is None:
                continue
            owner = f"ahba_app.{options.OPTIONS[option].stage}"
            if name not in (owner, "ahba_app.report.methods"):
                written.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {option}")
    assert not written, written


# --------------------------------------------------------------------------------------------
# no process-wide state in the stage modules
# --------------------------------------------------------------------------------------------
_MUTATORS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear",
             "add", "discard", "remove"}


def _state_changes(tree: ast.Module) -> list[str]:
    """``global`` statements, and changes made inside functions to containers bound at module
    level (item assignment or deletion, mutating methods)."""
    top = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
           for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
           if isinstance(t, ast.Name)}
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        shared = top - {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
        for node in ast.walk(function):
            if isinstance(node, ast.Global):
                found.append(f"{function.name}: global {', '.join(node.names)}")
            targets = []
            if isinstance(node, (ast.Assign, ast.Delete)):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) \
                        and target.value.id in shared:
                    found.append(f"{function.name}: {target.value.id}[...] changed")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in _MUTATORS and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id in shared:
                found.append(f"{function.name}: {node.func.value.id}.{node.func.attr}(...)")
    return found


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_stage_modules_keep_no_module_level_mutable_state(module):
    """No ``global`` statement, and no function changes a container bound at module level
    (registries are read, memos belong to the run that makes them)."""
    assert not _state_changes(_tree(_modules()[f"ahba_app.{module}"]))


@pytest.mark.parametrize("module", ["io", "_blocks"])
def test_readers_keep_no_module_level_mutable_state(module):
    """The same for the file readers and the threads: e.g. the record of the caches whose
    checksum was checked belongs to the run (``io.remembering_checks``)."""
    assert not _state_changes(_tree(_modules()[f"ahba_app.{module}"]))


@pytest.mark.parametrize("source", [
    "MEMO = {}\n\ndef remember(key, value):\n    MEMO[key] = value\n",
    "SEEN = []\n\ndef see(x):\n    SEEN.append(x)\n",
    "COUNT = 0\n\ndef count():\n    global COUNT\n    COUNT += 1\n",
    "CACHE = {}\n\ndef forget(key):\n    del CACHE[key]\n",
])
def test_the_state_check_sees_module_level_state(source):
    assert _state_changes(ast.parse(source))
    # a parameter of the same name is the caller's, not the module's
    assert not _state_changes(ast.parse("MEMO = {}\n\ndef f(MEMO):\n    MEMO[1] = 2\n"))


# --------------------------------------------------------------------------------------------
# no stage function writes a file it was not asked to
# --------------------------------------------------------------------------------------------
def _snapshot(*roots) -> dict:
    out = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                stat = path.stat()
                out[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return out


def test_the_engine_writes_nothing_without_a_store(ahba_small, tmp_path, monkeypatch):
    """``pipeline.run`` (the stages in order, what the API runs) with ``store=None`` on data
    whose caches exist writes no file: not beside the data, not in HOME, not in the working
    folder. With a store, the probe choice is its one file."""
    from ahba_app import pipeline
    from ahba_app.datasets import fetch_desikan_killiany
    from ahba_app.selection_cache import ChoiceStore

    from ahba_app.io import CACHE_DIRNAME

    # a folder of its own (other tests store probe choices beside the shared data meanwhile)
    data = tmp_path / "ahba"
    shutil.copytree(ahba_small, data, copy_function=os.link,
                    ignore=shutil.ignore_patterns(CACHE_DIRNAME))
    atlas = fetch_desikan_killiany()
    home, work = Path(os.environ["HOME"]), tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    settings = options.Settings(donors=("9861", "10021"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        first = pipeline.run(atlas["image"], atlas["info"], settings=settings,
                             data_dir=data)  # matrix caches: built if absent
        before = _snapshot(data, home, work)
        again = pipeline.run(atlas["image"], atlas["info"], settings=settings,
                             data_dir=data, store=None)
        assert _snapshot(data, home, work) == before
        folder = tmp_path / "choices"
        folder.mkdir()
        pipeline.run(atlas["image"], atlas["info"], settings=settings, data_dir=data,
                     store=ChoiceStore(folder))
    assert _snapshot(data, home, work) == before
    assert [p.name.startswith("selection-") for p in folder.iterdir()] == [True]
    assert again.expression.equals(first.expression)
