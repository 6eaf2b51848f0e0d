"""A client of the Allen Brain Atlas API's RMA query service (JSON answers).

One query is a model (``Gene``, ``Structure``, ``SectionDataSet``) with criteria, included
associations and the fields wanted (``only``); :func:`rows` sends it to
``<server>/api/v2/data/<Model>/query.json`` and returns every matching row, page by page
(``start_row``/``num_rows``, :data:`PAGE_ROWS` rows a page), so that no result is cut at the
server's page size. The server is the ``url`` argument, else ``$AHBA_APP_ALLEN_API``, else
:data:`ALLEN_API_URL`.

HTTP goes through the downloader's machinery (:mod:`ahba_app.fetch`): every request has its
connect and read timeouts (``fetch.CONNECT_TIMEOUT``, ``fetch.READ_TIMEOUT``); dropped
connections, timeouts and 5xx answers are tried again ``fetch.RETRIES`` times with a doubling
wait (``fetch.BACKOFF``); a server that cannot be reached (no network, refused, unknown host)
fails at once. Errors name the query:

- :class:`AllenAPIError` (an ``OSError``): the server could not be reached, kept failing, or sent
  something that is not the Allen API's JSON;
- :class:`AllenQueryError` (a ``ValueError``): the server refused the query (``success: false``);
- :class:`AllenNotFoundError` (an ``AllenQueryError``): a gene or structure asked for does not
  exist.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass

import requests

from .. import fetch

__all__ = ["ALLEN_API_URL", "AllenAPIError", "AllenNotFoundError", "AllenQueryError", "Query",
           "api_url", "rows"]

#: The Allen Brain Atlas API.
ALLEN_API_URL = "https://api.brain-map.org"
_QUERY_PATH = "api/v2/data/{model}/query.json"
#: Rows asked for per request.
PAGE_ROWS = 2000
#: Identifiers per query: longer lists are sent in several queries (URLs stay short).
VALUES_PER_QUERY = 100

_OFFLINE_HINT = ("ahba_app.mouse needs the Allen Brain Atlas API ({base}); set "
                 "$AHBA_APP_ALLEN_API to use a mirror. fetch_allenref_genes and "
                 "fetch_allenref_structures work offline once their tables are cached, "
                 "fetch_rubinov2015_structures always.")


class AllenAPIError(OSError):
    """The Allen API could not be reached, kept failing, or sent an unusable answer."""


class AllenQueryError(ValueError):
    """The Allen API refused a query (``success: false``)."""


class AllenNotFoundError(AllenQueryError):
    """A gene or structure asked for is not in the Allen API."""


def api_url(url: str | None = None) -> str:
    """The server: ``url``, else ``$AHBA_APP_ALLEN_API``, else the Allen Institute's."""
    return (url or os.environ.get("AHBA_APP_ALLEN_API") or ALLEN_API_URL).rstrip("/")


@dataclass(frozen=True)
class Query:
    """One RMA query: ``model``, criteria clauses, included associations, fields wanted."""

    model: str
    criteria: tuple = ()
    include: tuple = ()
    only: tuple = ()
    order: str | None = None

    def params(self) -> dict:
        params = {}
        for key, value in (("criteria", self.criteria), ("include", self.include),
                           ("only", self.only)):
            if value:
                params[key] = ",".join(value)
        if self.order:
            params["order"] = self.order
        return params

    def describe(self, base: str) -> str:
        """The query as a readable address (not URL-encoded), for messages."""
        text = "&".join(f"{k}={v}" for k, v in self.params().items())
        return f"{base}/{_QUERY_PATH.format(model=self.model)}?{text}"


def literal(value) -> str:
    """``value`` as an RMA criteria literal: an integer, or a quoted string."""
    if isinstance(value, str):
        if "[" in value or "]" in value:
            raise ValueError(f"{value!r} cannot be sent to the Allen API: its queries cannot "
                             f"hold square brackets.")
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value:
            return f'"{value}"'
        raise ValueError(f"{value!r} cannot be sent to the Allen API: its queries cannot hold "
                         f"both kinds of quotes.")
    return str(int(value))


def match(field: str, values: list) -> str:
    """The criteria filter ``[field$eq..]`` (one value) or ``[field$in..,..]``."""
    if len(values) == 1:
        return f"[{field}$eq{literal(values[0])}]"
    return f"[{field}$in{','.join(literal(v) for v in values)}]"


def _as_id(value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"id must be integers, not {value!r}.")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"id must be integers, not {value!r}: give short names as acronym= and "
                     f"full names as name=.")


def identifiers(id=None, acronym=None, name=None, *, kind: str) -> tuple[str, list]:
    """``(field, values)`` of the first of ``id``, ``acronym``, ``name`` given (one or a list).

    Values keep their order, without repeats; ids become ints. ``kind`` ('gene' or
    'structure') is for messages.
    """
    for field, value in (("id", id), ("acronym", acronym), ("name", name)):
        if value is None:
            continue
        many = isinstance(value, Iterable) and not isinstance(value, (str, bytes))
        values = list(value) if many else [value]
        if not values:
            raise ValueError(f"{field}= is empty: give at least one {kind} {field}.")
        if field == "id":
            values = [_as_id(v) for v in values]
        else:
            bad = [v for v in values if not isinstance(v, str)]
            if bad:
                raise ValueError(f"{kind} {field}s must be strings, not {bad[0]!r}.")
            values = [str(v) for v in values]
        return field, list(dict.fromkeys(values))
    raise TypeError(f"Give the {kind}(s) as one of id=, acronym= or name=.")


def chunks(values: list, size: int | None = None):
    size = size or VALUES_PER_QUERY
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _page(session: requests.Session, base: str, query: Query, start: int,
          verbose: bool) -> dict:
    """One page of ``query`` (the decoded JSON answer), retrying what may pass; or raise."""
    address = f"{base}/{_QUERY_PATH.format(model=query.model)}"
    params = {**query.params(), "start_row": str(start), "num_rows": str(PAGE_ROWS)}
    described = query.describe(base)
    if verbose:
        fetch._say(1, f"Querying {described}&start_row={start}&num_rows={PAGE_ROWS}")

    def once(state: dict) -> bytes:
        response = session.get(address, params=params,
                               timeout=(fetch.CONNECT_TIMEOUT, fetch.READ_TIMEOUT))
        state["reached"] = True
        with response:
            status = response.status_code
            if status >= 500 or status == 429:
                raise fetch._Retry(f"the server answered HTTP {status} {response.reason}")
            body = response.content
        if status >= 400:
            refused = _decode(body)
            if isinstance(refused, dict) and refused.get("success") is False:
                raise AllenQueryError(f"The Allen API refused the query {described}: "
                                      f"{refused.get('msg')}")
            raise AllenAPIError(f"Allen API query {described} failed: the server answered "
                                f"HTTP {status} {response.reason}; is {base} the Allen API (or "
                                f"a mirror of it, as $AHBA_APP_ALLEN_API or api_url=)?")
        return body

    def fail(reason: str) -> AllenAPIError:
        return AllenAPIError(f"Allen API query {described} failed: {reason}. "
                             + _OFFLINE_HINT.format(base=base))

    body = fetch._retrying(once, desc=f"Allen API {query.model} query", verbose=int(verbose),
                           fail=fail)
    answer = _decode(body)
    if answer is None:
        raise AllenAPIError(f"Allen API query {described}: the answer is not valid JSON "
                            f"(it begins {body[:60]!r}); is {base} the Allen API or a mirror "
                            f"of it? Try again later.")
    if not isinstance(answer, dict) or not isinstance(answer.get("success"), bool):
        raise AllenAPIError(f"Allen API query {described}: the answer is JSON but not the "
                            f"Allen API's (no 'success' field).")
    if not answer["success"]:
        raise AllenQueryError(f"The Allen API refused the query {described}: "
                              f"{answer.get('msg')}")
    if not isinstance(answer.get("msg"), list) or not isinstance(answer.get("total_rows"), int):
        raise AllenAPIError(f"Allen API query {described}: the answer lacks its rows ('msg' "
                            f"list) or 'total_rows'.")
    return answer


def _decode(body: bytes):
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def rows(query: Query, *, url: str | None = None, verbose: bool = False) -> list[dict]:
    """Every row matching ``query``, fetched page by page."""
    base = api_url(url)
    out: list = []
    with fetch._session() as session:
        while True:
            answer = _page(session, base, query, len(out), verbose)
            if answer.get("start_row", len(out)) != len(out):
                raise AllenAPIError(f"Allen API query {query.describe(base)}: asked for rows "
                                    f"from {len(out)}, the server sent rows from "
                                    f"{answer.get('start_row')}; is {base} the Allen API?")
            out.extend(answer["msg"])
            total = answer["total_rows"]
            if len(out) >= total or not answer["msg"]:
                break
    if len(out) != total:
        raise AllenAPIError(f"Allen API query {query.describe(base)}: the server announced "
                            f"{total} rows but sent {len(out)}; try again later.")
    return out


def missing(wanted: list, found: Iterable) -> list:
    """The values of ``wanted`` not in ``found``."""
    have = set(found)
    return [v for v in wanted if v not in have]


def not_found(kind: str, field: str, values: list, extra: str = "") -> AllenNotFoundError:
    shown = ", ".join(repr(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
    listing = {"gene": "fetch_allenref_genes()", "structure": "fetch_allenref_structures()"}[kind]
    case = "" if field == "id" else " (case sensitive)"
    return AllenNotFoundError(f"No mouse {kind} with {field}{case} {shown} in the Allen API"
                              f"{extra}; {listing} lists the valid ones.")
