"""A loopback stand-in for the Materials Project API, for driving the real mp-api client in tests.

It speaks the shape the client expects (see shared/NOTES-mp-api.md): ``GET /heartbeat`` ->
``{"db_version", "version", "access_controlled_batch_ids"}``; ``GET /materials/summary/`` honouring
``_skip``, ``_limit``, ``_fields``, ``_all_fields``, ``material_ids``, ``elements``, ``formula`` and
``chemsys``, answering ``{"data": [...], "meta": {"total_doc": N, ...}}``; the ``x-api-key`` header is
checked (401 when missing, 403 when wrong, with ``{"detail": ...}``).

Documents are built from the real MP data bundled in ``data/structures/`` (the 2017 dielectric and the
2015 piezoelectric sets): structure from the CIF (``Structure.as_dict()``), symmetry, band_gap, n,
e_total (= poly_total), e_ij_max, volume and density of the structure. Fields the bundled data lacks
(formation energy, moduli, ...) are null, as the API sends them for materials without them.
``last_updated`` values are synthetic (the sets' publication years).

Fault knobs (thread-safe, change them between or during runs): ``fail_429`` (answer 429 that many
times), ``fail_status`` / ``fail_count`` (answer e.g. 503 that many times, None = always),
``retry_after`` (Retry-After header on those), ``truncate_page`` + ``truncate_mode`` ("json": a cut
but well-framed body; "transport": the connection closes mid-body; "garbage": a complete body that
is not JSON, as a misconfigured proxy sends), ``delay_s`` (sleep before answering a summary request,
to exceed a client timeout), ``echo_key_in_errors`` (the 403 detail repeats the key, as a careless
server might). Data knobs: :meth:`MPServer.modify`,
:meth:`MPServer.add`, :meth:`MPServer.remove`, ``db_version``. Every request is logged in ``requests``.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
import warnings
from datetime import UTC, datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import pandas as pd

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "structures"
DIELECTRIC = "mp_dielectric_petousis2017.csv.gz"
PIEZO = "mp_piezoelectric_dejong2015.csv.gz"
TEST_KEY = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"  # 32 characters, like a real key
SUMMARY_PATH = "/materials/summary/"
MAX_LIMIT = 1000


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _document(row: dict[str, Any], last_updated: str) -> dict[str, Any]:
    from pymatgen.core import Structure
    from pymatgen.symmetry.groups import SpaceGroup

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(row["cif"], fmt="cif")
    number = int(row["space_group"])
    group = SpaceGroup.from_int_number(number)
    elements = sorted({el.symbol for el in structure.composition.elements})
    return {
        "material_id": row["material_id"],
        "formula_pretty": structure.composition.reduced_formula,
        "structure": structure.as_dict(),
        "symmetry": {"number": number, "symbol": group.symbol, "crystal_system": group.crystal_system.title(),
                     "point_group": row.get("point_group"), "symprec": 0.1, "version": "2.0"},
        "nsites": len(structure), "elements": elements, "nelements": len(elements), "chemsys": "-".join(elements),
        "volume": structure.volume, "density": float(structure.density),
        "band_gap": _number(row.get("band_gap")), "n": _number(row.get("n")),
        "e_total": _number(row.get("poly_total")), "e_ij_max": _number(row.get("eij_max")),
        "formation_energy_per_atom": None, "energy_above_hull": None, "bulk_modulus": None,
        "shear_modulus": None, "total_magnetization": None,
        "deprecated": False, "last_updated": last_updated,
    }


@lru_cache(maxsize=4)
def _documents(n_per_kind: int) -> tuple[dict[str, Any], ...]:
    diel = pd.read_csv(DATA_DIR / DIELECTRIC, keep_default_na=False).set_index("material_id", drop=False)
    piezo = pd.read_csv(DATA_DIR / PIEZO, keep_default_na=False).set_index("material_id", drop=False)
    both = sorted(set(diel.index) & set(piezo.index))[:n_per_kind]
    only_d = sorted(set(diel.index) - set(piezo.index))[:n_per_kind]
    only_p = sorted(set(piezo.index) - set(diel.index))[:n_per_kind]
    docs = []
    for mid in both:
        row = {**diel.loc[mid].to_dict(), "eij_max": piezo.at[mid, "eij_max"]}
        docs.append(_document(row, "2017-02-01T00:00:00"))
    docs += [_document(diel.loc[mid].to_dict(), "2017-02-01T00:00:00") for mid in only_d]
    docs += [_document(piezo.loc[mid].to_dict(), "2015-06-01T00:00:00") for mid in only_p]
    return tuple(sorted(docs, key=lambda d: d["material_id"]))


def build_documents(n_per_kind: int = 10) -> list[dict[str, Any]]:
    """Up to ``3 * n_per_kind`` summary documents (in both sets, dielectric only, piezo only); fresh copies."""
    return copy.deepcopy(list(_documents(n_per_kind)))


class MPServer:
    """The fake API on 127.0.0.1 (port chosen by the OS). Use as a context manager or start()/stop()."""

    def __init__(self, docs: list[dict[str, Any]] | None = None, api_key: str = TEST_KEY,
                 db_version: str = "2025.09.25") -> None:
        self.lock = threading.Lock()
        self.docs: dict[str, dict[str, Any]] = {d["material_id"]: d for d in (docs or build_documents())}
        self.api_key = api_key
        self.db_version = db_version
        self.emmet_version = "0.87.3"
        self.requests: list[dict[str, Any]] = []
        self.fail_429 = 0
        self.fail_status: int | None = None
        self.fail_count: int | None = None  # None = always
        self.retry_after: str | None = None
        self.truncate_page: int | None = None
        self.truncate_mode = "json"
        self.delay_s = 0.0
        self.echo_key_in_errors = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def start(self) -> MPServer:
        server = self

        class Handler(_Handler):
            state = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mp-fake", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)  # type: ignore[union-attr]
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- data knobs ---
    @staticmethod
    def now() -> str:
        return datetime.now(UTC).replace(tzinfo=None).isoformat()

    def modify(self, material_id: str, **fields: Any) -> None:
        """Change fields of one document and bump its last_updated (unless given)."""
        with self.lock:
            self.docs[material_id].update(fields)
            if "last_updated" not in fields:
                self.docs[material_id]["last_updated"] = self.now()

    def add(self, doc: dict[str, Any]) -> None:
        with self.lock:
            self.docs[doc["material_id"]] = {"last_updated": self.now(), **doc}

    def remove(self, material_id: str) -> None:
        with self.lock:
            del self.docs[material_id]

    def summary_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"].rstrip("/") == SUMMARY_PATH.rstrip("/")]

    # --- request handling (called from handler threads) ---
    def _select(self, params: dict[str, str]) -> list[dict[str, Any]]:
        docs = [self.docs[k] for k in sorted(self.docs)]
        if ids := params.get("material_ids"):
            wanted = set(ids.split(","))
            docs = [d for d in docs if d["material_id"] in wanted]
        if elements := params.get("elements"):
            needed = set(elements.split(","))
            docs = [d for d in docs if needed <= set(d.get("elements") or [])]
        if formula := params.get("formula"):
            docs = [d for d in docs if d.get("formula_pretty") in set(formula.split(","))]
        if chemsys := params.get("chemsys"):
            docs = [d for d in docs if d.get("chemsys") in set(chemsys.split(","))]
        return docs

    def respond_summary(self, params: dict[str, str], headers: Any) -> tuple[int, dict[str, str], bytes, int | None]:
        """(status, extra headers, body, bytes to actually send or None for all)."""
        key = headers.get("x-api-key")
        if not key:
            return 401, {}, _json({"detail": "No API key found in request"}), None
        if key != self.api_key:
            detail = f"Invalid API key: {key}" if self.echo_key_in_errors else "Invalid API key"
            return 403, {}, _json({"detail": detail}), None
        with self.lock:
            if self.fail_429 > 0:
                self.fail_429 -= 1
                return 429, self._retry_headers(), _json({"detail": "Rate limit exceeded"}), None
            if self.fail_status is not None and (self.fail_count is None or self.fail_count > 0):
                if self.fail_count is not None:
                    self.fail_count -= 1
                return self.fail_status, self._retry_headers(), _json({"detail": "Server error"}), None
            try:
                skip, limit = int(params.get("_skip", 0)), int(params.get("_limit", 100))
            except ValueError:
                return 400, {}, _json({"detail": "bad _skip/_limit"}), None
            if limit > MAX_LIMIT or limit < 1 or skip < 0:
                return 400, {}, _json({"detail": f"_limit must be 1..{MAX_LIMIT}"}), None
            docs = self._select(params)
            page = docs[skip:skip + limit]
            if params.get("_fields"):
                fields = params["_fields"].split(",")
            elif params.get("_all_fields", "").lower() == "true":
                fields = None
            else:
                fields = ["material_id"]  # the endpoint's default_fields
            data = [copy.deepcopy(d if fields is None else {f: d.get(f) for f in fields}) for d in page]
            truncate = self.truncate_page is not None and skip // limit == self.truncate_page
            mode = self.truncate_mode
        body = _json({"data": data, "meta": {"api_version": self.emmet_version, "time_stamp": self.now(),
                                             "total_doc": len(docs), "max_limit": MAX_LIMIT, "facet": None}})
        if truncate and mode == "json":
            return 200, {}, body[: len(body) // 2], None
        if truncate and mode == "garbage":
            return 200, {}, b"<html><body>502 Bad Gateway</body></html>", None
        return 200, {}, body, (len(body) // 2 if truncate else None)

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after is not None else {}


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    state: MPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        if path == "/heartbeat" or path == "/heartbeat/":
            status, headers, body, send = 200, {}, _json({"db_version": self.state.db_version,
                                                          "version": self.state.emmet_version,
                                                          "access_controlled_batch_ids": []}), None
        elif path.rstrip("/") == SUMMARY_PATH.rstrip("/"):
            if self.state.delay_s:
                time.sleep(self.state.delay_s)
            status, headers, body, send = self.state.respond_summary(params, self.headers)
        else:
            status, headers, body, send = 404, {}, _json({"detail": "Not Found"}), None
        with self.state.lock:
            self.state.requests.append({"path": path, "params": params, "status": status,
                                        "has_key": bool(self.headers.get("x-api-key")),
                                        "user_agent": self.headers.get("user-agent")})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if send is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(body if send is None else body[:send])
            if send is not None:
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout, delay_s)
            send = 0
        if send is not None:
            self.close_connection = True
