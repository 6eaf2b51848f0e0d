"""A local stand-in for the Allen Brain Atlas API (its RMA query service, JSON answers).

Tests of ``ahba_app.mouse`` (and of abagen's own ``abagen/tests/mouse/`` suite run against
ahba-app, and the abagen oracle) talk to this server on 127.0.0.1 instead of
``https://api.brain-map.org``. It answers ``GET /api/v2/data/<Model>/query.json`` for the models
``Gene``, ``Structure`` and ``SectionDataSet`` with the parameters ``criteria``, ``include``,
``only``, ``order``, ``start_row`` and ``num_rows`` (default 50, or ``all``), in the Allen API's
shape::

    {"success": true, "id": 0, "start_row": 0, "num_rows": 2, "total_rows": 2, "msg": [{...}, ...]}

and ``{"success": false, "msg": "<why>"}`` for a query it cannot run. Keys are sorted, as the
Allen API sends them.

Using it
--------
A context manager, a pytest fixture, or a command::

    from allen_api_server import AllenAPIServer
    with AllenAPIServer() as server:          # started on a free port of 127.0.0.1
        os.environ["AHBA_APP_ALLEN_API"] = server.url    # "http://127.0.0.1:<port>"
        ...

    from allen_api_server import allen_api    # pytest fixture: a started server, stopped after
    def test_x(allen_api): ...                # the test, with $AHBA_APP_ALLEN_API pointing at it

    python tests/allen_api_server.py [--full] [--page-limit N] [--port P]   # prints its URL

Behind an HTTP proxy, set ``NO_PROXY=127.0.0.1`` (the fixture does). abagen 0.1.3 itself always
asks https://api.brain-map.org: :data:`ABAGEN_REDIRECT` is Python text that, run in abagen's
interpreter after ``import abagen``, sends its queries to ``$AHBA_APP_ALLEN_API`` instead.

``AllenAPIServer(full=True)`` (``--full``) pads the tables to the sizes abagen's own tests assert
(19,991 genes, 1,327 structures); the default is a small dataset. ``server.requests`` lists the
queries received (``(model, {param: value})``), for assertions.

Faults
------
``server.page_limit = N`` caps every answer at N rows whatever ``num_rows`` asks (the client must
page with ``start_row``). ``server.fault(kind, times=1, delay=...)`` makes the next ``times``
requests fail as ``kind``:

- ``"http500"``: HTTP 500 with a text body;
- ``"slow"``: the normal answer after ``delay`` seconds (past a client's timeout);
- ``"success_false"``: HTTP 200, ``{"success": false, "msg": ...}``;
- ``"malformed"``: HTTP 200 with JSON cut in the middle;
- ``"drop"``: the connection is closed without an answer;
- ``"first_page"``: the rows from the first one, whatever ``start_row`` asks (a server that
  does not page).

``fault(kind, after=N)`` lets N requests through first.

The data
--------
Built from the field lists of the Allen API's models. Facts quoted in abagen's documentation
and tests (the Pdyn, Ace and Cd99 gene ids and names, the experiments of Snca, Gba, Elf4 and of
genes 84193 and 18608, the expression figures of experiments 986, 1611 and 69782969 and of the
documented examples, the centres of structures 1018 and SSp) are used as given, so those tests
can pass; the Rubinov et al. (2015) structures come from ``ahba_app/data``. Every other value is
invented (deterministic), and is NOT Allen data.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[1]
RUBINOV_CSV = REPO / "ahba_app" / "data" / "rubinov2015_pnas.csv.gz"

#: Python text for abagen 0.1.3's interpreter: its Allen API queries (``urlopen`` in
#: ``abagen.mouse.utils``) go to ``$AHBA_APP_ALLEN_API`` instead of https://api.brain-map.org.
ABAGEN_REDIRECT = """
import os as _os
import urllib.request as _request
import abagen.mouse.utils as _abagen_mouse_utils


def _urlopen_allen_mirror(url, *args, **kwargs):
    base = _os.environ["AHBA_APP_ALLEN_API"].rstrip("/")
    return _request.urlopen(url.replace("https://api.brain-map.org", base, 1), *args, **kwargs)


_abagen_mouse_utils.urlopen = _urlopen_allen_mirror
"""

DEFAULT_NUM_ROWS = 50          # what the Allen API sends when num_rows is not given
FULL_GENES = 19_991            # rows abagen's tests expect from Gene products[id$eq1]
FULL_STRUCTURES = 1_327        # rows abagen's tests expect from Structure ontology[id$eq1]

GENE_FIELDS = (
    "acronym", "alias_tags", "chromosome_id", "ensembl_id", "entrez_id",
    "genomic_reference_update_id", "homologene_id", "id", "legacy_ensembl_gene_id", "name",
    "organism_id", "original_name", "original_symbol", "reference_genome_id", "sphinx_id",
    "version_status",
)
STRUCTURE_FIELDS = (
    "acronym", "atlas_id", "color_hex_triplet", "depth", "graph_id", "graph_order",
    "hemisphere_id", "id", "name", "neuro_name_structure_id", "neuro_name_structure_id_path",
    "ontology_id", "parent_structure_id", "safe_name", "sphinx_id", "structure_id_path", "weight",
)
UNIONIZE_MEASURES = (
    "expression_density", "expression_energy", "sum_expressing_pixel_intensity",
    "sum_expressing_pixels", "sum_pixel_intensity", "sum_pixels", "voxel_energy_cv",
    "voxel_energy_mean",
)


# --------------------------------------------------------------------------------------------
# The dataset: records with attributes and associations

@dataclass
class Record:
    attrs: dict
    assoc: dict = field(default_factory=dict)   # name -> Record (one) or list of Records


@dataclass
class Model:
    table: str                                   # the name used in ``only``/``order``
    records: list
    associations: dict                           # association name -> its table name


@dataclass
class Dataset:
    genes: list
    structures: list
    experiments: list

    def models(self) -> dict:
        return {
            "Gene": Model("genes", self.genes, {"products": "products"}),
            "Structure": Model("structures", self.structures,
                               {"ontology": "ontologies", "structure_centers": "structure_centers"}),
            "SectionDataSet": Model("data_sets", self.experiments,
                                    {"products": "products", "genes": "genes",
                                     "plane_of_section": "plane_of_sections",
                                     "structure_unionizes": "structure_unionizes"}),
        }

    def gene(self, **match) -> Record:
        return next(r for r in self.genes if all(r.attrs[k] == v for k, v in match.items()))

    def structure(self, **match) -> Record:
        return next(r for r in self.structures
                    if all(r.attrs[k] == v for k, v in match.items()))


def gene_record(gene_id: int, acronym: str, name: str, *, product: int = 1,
                organism: int = 2) -> Record:
    rng = random.Random(f"gene-{gene_id}")
    attrs = {
        "acronym": acronym,
        "alias_tags": f"{acronym.lower()} {acronym}-1",
        "chromosome_id": rng.randint(1, 21),
        "ensembl_id": None,
        "entrez_id": gene_id + 1_000_000,
        "genomic_reference_update_id": 491928275,
        "homologene_id": rng.choice([None, rng.randint(100, 99_999)]),
        "id": gene_id,
        "legacy_ensembl_gene_id": None,
        "name": name,
        "organism_id": organism,
        "original_name": name,
        "original_symbol": acronym,
        "reference_genome_id": None,
        "sphinx_id": rng.randint(1, 200_000),
        "version_status": rng.choice(["no change", "updated"]),
    }
    return Record(attrs, {"products": [Record({"id": product, "name": f"product {product}"})]})


def structure_record(structure_id: int, acronym: str, name: str, *, order: int,
                     ontology: int = 1, centers: dict | None = None) -> Record:
    """``centers``: reference space id (9 coronal, 10 sagittal) -> (x, y, z); invented if None."""
    rng = random.Random(f"structure-{structure_id}")
    attrs = {
        "acronym": acronym,
        "atlas_id": rng.choice([None, rng.randint(1, 1000)]),
        "color_hex_triplet": f"{rng.randrange(1 << 24):06X}",
        "depth": rng.randint(1, 9),
        "graph_id": 1,
        "graph_order": order,
        "hemisphere_id": 3,
        "id": structure_id,
        "name": name,
        "neuro_name_structure_id": None,
        "neuro_name_structure_id_path": None,
        "ontology_id": ontology,
        "parent_structure_id": 997,
        "safe_name": name,
        "sphinx_id": order + 1,
        "structure_id_path": f"/997/{structure_id}/",
        "weight": 8690,
    }
    if centers is None:
        x, y = rng.randrange(100, 11_000, 10), rng.randrange(100, 8_000, 10)
        centers = {10: (x, y, rng.randrange(100, 5_700, 10)),
                   9: (x, y, rng.randrange(5_700, 11_400, 10))}
    assoc = {"ontology": Record({"id": ontology, "name": f"ontology {ontology}"}),
             "structure_centers": structure_centers(structure_id, centers)}
    return Record(attrs, assoc)


def structure_centers(structure_id: int, centers: dict) -> list:
    """Records of one structure's centres: reference space id -> (x, y, z)."""
    return [Record({"id": structure_id * 100 + space, "reference_space_id": space,
                    "structure_id": structure_id, "x": xyz[0], "y": xyz[1], "z": xyz[2]})
            for space, xyz in sorted(centers.items())]


# abagen's tests: the three structures and the figures they expect
_TEST_STRUCTURES = (182305713, 182305709, 182305705)
_KNOWN_UNIONIZES = {
    986: {"expression_energy": (7.73432, 7.28206, 3.82741),
          "expression_density": (0.0603072, 0.0553335, 0.0298628),
          "sum_pixels": (419628.0, 2238000.0, 3629050.0)},
    69782969: {"expression_energy": (1.00879, 1.40198, 2.34988),
               "expression_density": (0.00650952, 0.00896709, 0.015409),
               "sum_pixels": (195863.0, 1051230.0, 1440430.0)},
    1611: {"expression_energy": (0.236301, 0.261266, 0.416281),
           "expression_density": (0.00207073, 0.00232453, 0.00372069),
           "sum_pixels": (419628.0, 2238000.0, 3636670.0),
           "voxel_energy_cv": (0.923913, 0.995631, 0.81265)},
}
# abagen's documented examples (one experiment per gene here, so the mean is the value)
_DOC_DENSITY = {69782969: {22: 0.024840, 31: 0.017199},      # Pdyn
                5000011: {22: 0.001283, 31: 0.001427},       # Ace
                5000012: {22: 0.067537, 31: 0.056442}}       # Cd99


def _unionizes(experiment_id: int, structure_ids, skip=()) -> list:
    out = []
    for sid in structure_ids:
        if sid in skip:
            continue
        rng = random.Random(f"unionize-{experiment_id}-{sid}")
        pixels = float(rng.randrange(50_000, 4_000_000))
        expressing = float(int(pixels * rng.uniform(0.001, 0.2)))
        attrs = {
            "id": experiment_id * 1000 + len(out),
            "section_data_set_id": experiment_id,
            "structure_id": sid,
            "expression_density": expressing / pixels,
            "expression_energy": rng.uniform(0.01, 10.0),
            "sum_expressing_pixel_intensity": expressing * rng.uniform(50, 250),
            "sum_expressing_pixels": expressing,
            "sum_pixel_intensity": pixels * rng.uniform(50, 250),
            "sum_pixels": pixels,
            "voxel_energy_cv": rng.uniform(0.2, 2.5),
            "voxel_energy_mean": rng.uniform(0.01, 10.0),
        }
        known = _KNOWN_UNIONIZES.get(experiment_id, {})
        if sid in _TEST_STRUCTURES:
            for measure, values in known.items():
                attrs[measure] = values[_TEST_STRUCTURES.index(sid)]
        if sid in _DOC_DENSITY.get(experiment_id, {}):
            attrs["expression_density"] = _DOC_DENSITY[experiment_id][sid]
        out.append(Record(attrs))
    return out


def experiment_record(experiment_id: int, gene: Record, plane: str, structure_ids, *,
                      failed: bool = False, product: int = 1, skip=()) -> Record:
    plane_id = {"coronal": 1, "sagittal": 2}[plane]
    attrs = {
        "expression": True,
        "failed": failed,
        "id": experiment_id,
        "plane_of_section_id": plane_id,
        "reference_space_id": {"coronal": 9, "sagittal": 10}[plane],
        "section_thickness": 25.0,
        "specimen_id": experiment_id + 7,
        "storage_directory": f"/external/aibs/prod{experiment_id % 7}/",
    }
    assoc = {
        "products": [Record({"id": product, "name": f"product {product}"})],
        "genes": [Record(dict(gene.attrs), gene.assoc)],
        "plane_of_section": Record({"id": plane_id, "name": plane}),
        "structure_unionizes": _unionizes(experiment_id, structure_ids, skip),
    }
    return Record(attrs, assoc)


def _rubinov() -> list[tuple[int, str, str]]:
    with gzip.open(RUBINOV_CSV, "rt", newline="", encoding="utf-8") as handle:
        return [(int(row["id"]), row["acronym"], row["name"]) for row in csv.DictReader(handle)]


def make_dataset(full: bool = False) -> Dataset:
    """The served data; ``full`` pads genes and structures to the sizes of abagen's tests."""
    genes = [
        gene_record(18376, "Pdyn", "prodynorphin"),
        gene_record(11210, "Ace", "angiotensin I converting enzyme (peptidyl-dipeptidase A) 1"),
        gene_record(163028, "Cd99", "CD99 antigen"),
        gene_record(20617, "Snca", "synuclein, alpha"),
        gene_record(14466, "Gba", "glucosidase, beta, acid"),
        gene_record(56501, "Elf4", "E74-like factor 4 (ets domain transcription factor)"),
        gene_record(84193, "Kcnj16", "potassium inwardly-rectifying channel, subfamily J, member 16"),
        gene_record(18608, "Pde6h", "phosphodiesterase 6H, cGMP-specific, cone, gamma"),
        gene_record(20536, "Slc6a3",
                    "solute carrier family 6 (neurotransmitter transporter, dopamine), member 3"),
        gene_record(31001, "Grm'1", "a gene named with an apostrophe (invented)"),
        # a human gene (product 2): outside products[id$eq1]
        gene_record(1018376, "PDYN", "prodynorphin", product=2, organism=1),
    ]
    structures = [structure_record(997, "root", "root", order=0)]
    structures += [structure_record(sid, acr, name, order=n + 1)
                   for n, (sid, acr, name) in enumerate(_rubinov())]
    known_centers = {1018: {10: (7800, 3400, 1050), 9: (7800, 3400, 10350)},
                     322: {10: (5740, 2060, 2730), 9: (5740, 2060, 8670)}}
    for s in structures:
        if s.attrs["id"] in known_centers:
            s.assoc["structure_centers"] = structure_centers(s.attrs["id"],
                                                             known_centers[s.attrs["id"]])
    n = len(structures)
    structures += [
        structure_record(182305713, "PTLp-1", "Posterior parietal association areas, layer 1",
                         order=n + 1),
        structure_record(182305709, "ACA-1", "Anterior cingulate area, layer 1", order=n + 2),
        structure_record(182305705, "ILA-1", "Infralimbic area, layer 1", order=n + 3),
        structure_record(8, "grey", "Basic cell groups and regions", order=n + 4),
        # no centre in any reference space
        structure_record(1009, "fiber tracts", "fiber tracts", order=n + 5, centers={}),
        # another ontology: outside ontology[id$eq1]
        structure_record(16000, "SSp", "a structure of another ontology", order=n + 6,
                         ontology=12),
    ]
    if full:
        ones = [g for g in genes if g.attrs["organism_id"] == 2]
        genes += [gene_record(600_000 + i, f"Syn{i}", f"synthetic gene {i}")
                  for i in range(FULL_GENES - len(ones))]
        in_one = [s for s in structures if s.attrs["ontology_id"] == 1]
        structures += [structure_record(900_000 + i, f"SYN{i}", f"Synthetic structure {i}",
                                        order=len(structures) + i)
                       for i in range(FULL_STRUCTURES - len(in_one))]
    genes.sort(key=lambda r: r.attrs["id"])
    structures.sort(key=lambda r: r.attrs["id"])

    unionized = [sid for sid, _, _ in _rubinov()] + list(_TEST_STRUCTURES) + [8]
    by = {g.attrs["acronym"]: g for g in genes}
    plan = [  # experiment id, gene, plane (from abagen's tests where they name them)
        (988, "Snca", "sagittal"), (990, "Snca", "sagittal"), (79904550, "Snca", "sagittal"),
        (986, "Snca", "coronal"), (79908848, "Snca", "coronal"),
        (1612, "Gba", "sagittal"), (1611, "Gba", "coronal"),
        (73834415, "Elf4", "sagittal"), (77464840, "Elf4", "sagittal"),
        (70238925, "Kcnj16", "sagittal"), (71147924, "Kcnj16", "sagittal"),
        (71213117, "Kcnj16", "sagittal"), (74047443, "Kcnj16", "coronal"),
        (69289721, "Pde6h", "sagittal"),
        (69782969, "Pdyn", "sagittal"), (5000011, "Ace", "sagittal"),
        (5000012, "Cd99", "sagittal"), (5000013, "Slc6a3", "coronal"),
    ]
    experiments = [experiment_record(eid, by[acr], plane, unionized,
                                     skip=(22,) if eid == 990 else ())
                   for eid, acr, plane in plan]
    experiments += [  # neither may be answered to products[id$eq1] with [failed$eqfalse]
        experiment_record(5000020, by["Snca"], "sagittal", unionized, failed=True),
        experiment_record(5000021, by["Snca"], "sagittal", unionized, product=3),
    ]
    experiments.sort(key=lambda r: r.attrs["id"])
    return Dataset(genes, structures, experiments)


# --------------------------------------------------------------------------------------------
# RMA queries

class QueryError(Exception):
    """The query cannot be run; answered as ``success: false``."""


_OPS = ("nin", "eq", "ne", "in", "lt", "gt", "le", "ge", "il", "li")


def _split_outside_brackets(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _split_values(text: str) -> list[str]:
    """Comma-separated values; a quote opens a quoted value only at the start of one."""
    values, i = [], 0
    while i <= len(text):
        if i < len(text) and text[i] in "'\"":
            end = text.find(text[i], i + 1)
            if end < 0:
                raise QueryError(f"unterminated quote in {text!r}")
            values.append(text[i + 1:end])
            i = end + 1
            if i < len(text) and text[i] != ",":
                raise QueryError(f"text after a quoted value in {text!r}")
            i += 1
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            values.append(text[i:end])
            i = end + 1
    return values


@dataclass
class Filter:
    field: str
    op: str
    values: list


@dataclass
class Clause:
    path: str | None          # None: the model itself; else an association name
    filters: list


def parse_criteria(text: str) -> list[Clause]:
    clauses = []
    for part in _split_outside_brackets(text):
        match = re.fullmatch(r"([A-Za-z_]*)((?:\[[^\[\]]*\])+)", part)
        if not match:
            raise QueryError(f"cannot parse criteria {part!r}")
        filters = []
        for body in re.findall(r"\[([^\[\]]*)\]", match.group(2)):
            name, dollar, rest = body.partition("$")
            op = next((o for o in _OPS if rest.startswith(o)), None)
            if not dollar or not name or op is None:
                raise QueryError(f"cannot parse filter [{body}]")
            raw = rest[len(op):]
            values = _split_values(raw) if op in ("in", "nin") else [_unquote(raw)]
            filters.append(Filter(name, op, values))
        clauses.append(Clause(match.group(1) or None, filters))
    return clauses


def _typed(value: str, example, name: str):
    if isinstance(example, bool):
        if value not in ("true", "false"):
            raise QueryError(f"{value!r} is not a boolean for {name}")
        return value == "true"
    if isinstance(example, int):
        try:
            return int(value)
        except ValueError:
            raise QueryError(f"{value!r} is not an integer for {name}") from None
    if isinstance(example, float):
        try:
            return float(value)
        except ValueError:
            raise QueryError(f"{value!r} is not a number for {name}") from None
    return value


def _example(records: list, name: str):
    for r in records:
        if r.attrs.get(name) is not None:
            return r.attrs[name]
    return ""


def _matches(record: Record, filters: list, examples: dict) -> bool:
    for f in filters:
        if f.field not in record.attrs:
            raise QueryError(f"unknown field {f.field!r}")
        have = record.attrs[f.field]
        wanted = [_typed(v, examples[f.field], f.field) for v in f.values]
        if f.op in ("il", "li"):
            pattern = re.escape(wanted[0]).replace(r"\*", ".*")
            flags = re.IGNORECASE if f.op == "il" else 0
            ok = have is not None and re.fullmatch(pattern, str(have), flags) is not None
        elif have is None:
            ok = f.op in ("ne", "nin")
        else:
            ok = {"eq": lambda: have == wanted[0], "ne": lambda: have != wanted[0],
                  "in": lambda: have in wanted, "nin": lambda: have not in wanted,
                  "lt": lambda: have < wanted[0], "gt": lambda: have > wanted[0],
                  "le": lambda: have <= wanted[0], "ge": lambda: have >= wanted[0]}[f.op]()
        if not ok:
            return False
    return True


def _records_of(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _all_nested(model: Model, name: str) -> list:
    return [n for r in model.records for n in _records_of(r.assoc.get(name))]


def run_query(models: dict, model_name: str, params: dict, page_limit: int | None) -> dict:
    """The JSON answer to one query (a dict), or raise QueryError."""
    if model_name not in models:
        raise QueryError(f"unknown model {model_name!r}")
    model = models[model_name]
    clauses = parse_criteria(params.get("criteria", ""))
    includes = [i.strip() for i in params.get("include", "").split(",") if i.strip()]
    for name in includes:
        if name not in model.associations:
            raise QueryError(f"{model_name} has no association {name!r}")
    own = {c for r in model.records for c in r.attrs}
    nested_examples = {}
    for clause in clauses:
        if clause.path is not None and clause.path not in model.associations:
            raise QueryError(f"{model_name} has no association {clause.path!r}")
    examples = {name: _example(model.records, name) for name in own}

    def nested_ok(record: Record, clause: Clause) -> bool:
        key = clause.path
        if key not in nested_examples:
            nested = _all_nested(model, key)
            nested_examples[key] = {c: _example(nested, c) for n in nested for c in n.attrs}
        return _matches(record, clause.filters, nested_examples[key])

    rows = []
    for record in model.records:
        keep = True
        for clause in clauses:
            if clause.path is None:
                keep = _matches(record, clause.filters, examples)
            else:
                keep = any(nested_ok(n, clause) for n in _records_of(record.assoc.get(clause.path)))
            if not keep:
                break
        if keep:
            rows.append(record)

    # order
    for term in reversed([t.strip() for t in params.get("order", "").split(",") if t.strip()]):
        name, _, direction = term.partition("$")
        table, dot, column = name.rpartition(".")
        if dot and table != model.table:
            raise QueryError(f"cannot order {model_name} by {name!r}")
        if column not in own:
            raise QueryError(f"unknown field {column!r} in order")
        rows.sort(key=lambda r: (r.attrs[column] is None, r.attrs[column]),
                  reverse=direction == "desc")

    # page
    try:
        start = int(params.get("start_row", 0))
        count = params.get("num_rows", str(DEFAULT_NUM_ROWS))
        count = len(rows) if count == "all" else int(count)
    except ValueError:
        raise QueryError("start_row and num_rows must be integers (num_rows may be 'all')") \
            from None
    if start < 0 or count < 0:
        raise QueryError("start_row and num_rows must not be negative")
    if page_limit is not None:
        count = min(count, page_limit)
    page = rows[start:start + count]

    # only
    only = [o.strip() for o in params.get("only", "").split(",") if o.strip()]
    tables = {model.table: None, **{t: a for a, t in model.associations.items()},
              **{a: a for a in model.associations}}
    wanted: dict = {}      # table key (None: the model) -> set of fields
    for name in only:
        table, dot, column = name.rpartition(".")
        if not dot:    # a bare name: a field of the model (or an association, included anyway)
            if column not in model.associations:
                wanted.setdefault(None, set()).add(column)
        elif table in tables:
            wanted.setdefault(tables[table], set()).add(column)
        else:
            raise QueryError(f"unknown table {table!r} in only")

    def render(record: Record, key, criteria) -> dict:
        keep = wanted.get(key, set())
        out = {k: v for k, v in record.attrs.items() if not keep or k in keep}
        if key is None:
            for name in includes:
                nested = record.assoc.get(name)
                mine = [c for c in clauses if c.path == name]
                if isinstance(nested, list):
                    out[name] = [render(n, name, mine) for n in nested
                                 if all(nested_ok(n, c) for c in mine)]
                else:
                    out[name] = None if nested is None else render(nested, name, mine)
        return out

    return {"success": True, "id": 0, "start_row": start, "num_rows": len(page),
            "total_rows": len(rows), "msg": [render(r, None, clauses) for r in page]}


# --------------------------------------------------------------------------------------------
# The server

_FAULTS = ("http500", "slow", "success_false", "malformed", "drop", "first_page")
_PATH = re.compile(r"/api/v2/data/([A-Za-z]+)/query\.json")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, content_type="application/json; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        server: AllenAPIServer = self.server.owner
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        match = _PATH.fullmatch(parts.path)
        server._record(match.group(1) if match else parts.path, params)
        fault = server._next_fault()
        if fault is not None and fault[0] == "first_page":
            params["start_row"] = "0"
        elif fault is not None:
            kind, delay = fault
            if kind == "http500":
                return self._send(500, b"Internal Server Error\n", "text/plain")
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            if kind == "slow":
                time.sleep(delay)
            if kind == "success_false":
                return self._send(200, json.dumps(
                    {"success": False, "id": -1, "start_row": 0, "num_rows": 0, "total_rows": 0,
                     "msg": "Data Access error in query: the server refused it (fault)"}).encode())
            if kind == "malformed":
                return self._send(200, b'{"success": true, "id": 0, "start_row": 0, "msg": [{"id"')
        if not match:
            return self._send(404, b"Not Found\n", "text/plain")
        try:
            answer = run_query(server.models, match.group(1), params, server.page_limit)
        except QueryError as exc:
            answer = {"success": False, "id": -1, "start_row": 0, "num_rows": 0,
                      "total_rows": 0, "msg": f"Data Access error in query: {exc}"}
        self._send(200, json.dumps(answer, sort_keys=True).encode())


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        # a client that gave up (timeout) closes its end: nothing to report
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class AllenAPIServer:
    """The Allen API stand-in; ``start()``/``stop()`` or ``with AllenAPIServer() as server``."""

    def __init__(self, dataset: Dataset | None = None, *, full: bool = False,
                 page_limit: int | None = None, port: int = 0):
        self.dataset = dataset if dataset is not None else make_dataset(full=full)
        self.models = self.dataset.models()
        self.page_limit = page_limit
        self.requests: list = []
        self._faults: list = []
        self._lock = threading.Lock()
        self._port = port
        self._httpd = None
        self._thread = None
        self.url = None

    def fault(self, kind: str, times: int = 1, delay: float = 0.0, after: int = 0) -> None:
        """Make ``times`` requests, after the next ``after``, fail as ``kind`` (see the module's
        docstring)."""
        if kind not in _FAULTS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(_FAULTS)}")
        with self._lock:
            self._faults.extend([None] * after + [(kind, delay)] * times)

    def _next_fault(self):
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _record(self, model: str, params: dict) -> None:
        with self._lock:
            self.requests.append((model, params))

    def start(self) -> "AllenAPIServer":
        self._httpd = _HTTPServer(("127.0.0.1", self._port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> "AllenAPIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


try:
    import pytest
except ImportError:   # the module also runs as a command without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def allen_api(monkeypatch):
        """A started AllenAPIServer (small dataset); $AHBA_APP_ALLEN_API points at it."""
        with AllenAPIServer() as server:
            monkeypatch.setenv("AHBA_APP_ALLEN_API", server.url)
            monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
            monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
            yield server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the sizes of abagen's tests")
    parser.add_argument("--page-limit", type=int, default=None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with AllenAPIServer(full=args.full, page_limit=args.page_limit, port=args.port) as server:
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
