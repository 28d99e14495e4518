"""Read a published ServeGen client pool (``chunk-N-trace.csv`` + ``chunk-N-dataset.json``).

Format (see the data's SOURCE.md): the CSV has no header and the columns
``window_start_s, rate, cv, pattern, shape, scale`` per 600 s window (an empty
pattern = inactive); the JSON maps each 6 h window start to ``{field: "{value:
prob, ...}"}``, a Python dict literal of empirical frequencies.

Rules:

* A client whose ``chunk-N-dataset.json`` is absent (15 of m-large's 162), or
  whose windows are all empty, is skipped with a warning (ServeGen's own loader
  keeps only clients with a dataset file); the skip is recorded in the pool's
  ``notes``.
* A data window stored as ``"{}"`` falls back to the client's whole-trace
  distribution: the mixture of its windows weighted by their request counts.
* Request counts are recovered as ``N = round(1 / min p)`` per window (the
  probabilities are multiples of ``1 / N``); ``count = p * N``.

Parsing the 117 MB m-large pool takes tens of seconds, so the parsed pool is
cached as Parquet under ``$SERVEGEN_ML_CACHE_DIR`` (default
``~/.cache/servegen_ml``), keyed by the source files' names, sizes and
modification times; a second load reads the cache.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from servegen_ml.compose import interarrival as ia
from servegen_ml.core.errors import InputNotFoundError, UserError
from servegen_ml.pool.empirical import count_by_keys
from servegen_ml.pool.table import FIELDS, POPULATION, WHOLE_TRACE, ClientPool

_CHUNK = re.compile(r"^chunk-(\d+)-(trace\.csv|dataset\.json)$")
CACHE_ENV = "SERVEGEN_ML_CACHE_DIR"
_CACHE_LAYOUT = 2


def is_servegen_pool(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any(_CHUNK.match(p.name) for p in path.iterdir())


def load_servegen_pool(directory: str | os.PathLike, cache: bool = True) -> ClientPool:
    """The ClientPool of a ServeGen data directory (cached after the first parse)."""
    directory = Path(directory)
    files = _chunk_files(directory)
    cache_dir = _cache_path(directory, files) if cache else None
    if cache_dir is not None and (cache_dir / "pool.json").is_file():
        try:
            return ClientPool.load(cache_dir)
        except (ValueError, FileNotFoundError, OSError):
            pass  # A damaged cache is rebuilt below.
    pool = parse_servegen_pool(directory, files)
    if cache_dir is not None:
        try:
            pool.save(cache_dir)
        except OSError as e:
            warnings.warn(f"could not cache the parsed pool in {cache_dir}: {e}", stacklevel=2)
    return pool


def _chunk_files(directory: Path) -> dict[int, dict[str, Path]]:
    if not directory.is_dir():
        raise InputNotFoundError(f"ServeGen pool directory {directory} does not exist")
    files: dict[int, dict[str, Path]] = {}
    for p in directory.iterdir():
        m = _CHUNK.match(p.name)
        if m:
            files.setdefault(int(m.group(1)), {})[m.group(2)] = p
    if not any("trace.csv" in f for f in files.values()):
        raise InputNotFoundError(f"{directory}: no chunk-N-trace.csv files; not a ServeGen client pool")
    return dict(sorted(files.items()))


def _cache_path(directory: Path, files) -> Path | None:
    h = hashlib.sha256(f"{_CACHE_LAYOUT}\0{directory.resolve()}".encode())
    for n, kinds in files.items():
        for kind, p in sorted(kinds.items()):
            st = p.stat()
            h.update(f"\0{n}/{kind}/{st.st_size}/{st.st_mtime_ns}".encode())
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "servegen_ml")
    return root / "pools" / f"{directory.name}-{h.hexdigest()[:20]}"


def parse_servegen_pool(directory: Path, files=None) -> ClientPool:
    files = files or _chunk_files(directory)
    rate_parts, pmf_parts, clients, skipped = [], [], [], []
    rate_window_s, data_window_s, span_s = None, None, 0.0
    for n, kinds in files.items():
        if "trace.csv" not in kinds:
            continue
        rates, window_s, end_s = _read_rate_csv(kinds["trace.csv"])
        rate_window_s = rate_window_s or window_s
        span_s = max(span_s, end_s)
        parts, dw = (
            _read_dataset_json(kinds["dataset.json"], len(clients)) if "dataset.json" in kinds else ([], None)
        )
        if not parts:
            skipped.append(str(n))
            continue
        data_window_s = data_window_s or dw
        span_s = max(span_s, max(p[1] for p in parts) + (data_window_s or 0.0))
        rates["client"] = np.full(len(rates["rate"]), len(clients))
        rate_parts.append(rates)
        pmf_parts.extend(parts)
        clients.append(str(n))
    if not clients:
        raise UserError(f"{directory}: no client has both a trace CSV and a non-empty dataset JSON")
    notes = []
    if skipped:
        msg = (
            f"{directory}: skipped {len(skipped)} clients without length distributions: {', '.join(skipped)}"
        )
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    rates = {k: np.concatenate([r[k] for r in rate_parts]) for k in rate_parts[0]}
    active_windows = np.bincount(rates["client"], minlength=len(clients))
    rate_sum = np.bincount(rates["client"], weights=rates["rate"], minlength=len(clients))
    per_client_rate = rate_sum[active_windows > 0] / active_windows[active_windows > 0]
    rates_df = pd.DataFrame(
        {
            "client_id": pd.Categorical.from_codes(rates.pop("client"), categories=clients),
            "window_start_s": rates["window_start_s"],
            "rate": rates["rate"],
            "cv": rates["cv"],
            "family": pd.Categorical.from_codes(rates["family"], categories=list(ia.FAMILIES)),
            "shape": rates["shape"],
            "scale": rates["scale"],
        }
    )
    return ClientPool(
        clients=tuple(clients),
        rates=rates_df,
        pmfs=_assemble_pmfs(pmf_parts, clients),
        rate_window_s=float(rate_window_s),
        data_window_s=float(data_window_s or span_s),
        span_s=float(span_s),
        origin_s=0.0,
        population_rate=float(np.median(per_client_rate)) if len(per_client_rate) else 0.0,
        source=f"servegen:{directory.resolve()}",
        notes=notes,
    )


def _read_rate_csv(path: Path) -> tuple[dict[str, np.ndarray], float, float]:
    """Active windows of one client (numpy columns), the window length and the end of the last window."""
    names = ["window_start_s", "rate", "cv", "family", "shape", "scale"]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.float64() for n in names if n != "family"} | {"family": pa.string()},
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: cannot parse ServeGen trace CSV ({e})") from None
    cols = {n: table[n].to_numpy() for n in names}
    starts = cols["window_start_s"]
    window_s = float(np.min(np.diff(starts))) if len(starts) > 1 else 600.0
    pattern = cols.pop("family").astype(str)
    active = pattern != ""
    family = np.full(len(pattern), -1, dtype=np.int8)
    for code, name in enumerate(ia.FAMILIES):
        family[pattern == name] = code
    valid = (family >= 0) & (cols["rate"] > 0) & (cols["shape"] > 0) & (cols["scale"] > 0)
    bad = np.flatnonzero(active & ~valid)
    if len(bad):
        raise UserError(
            f"{path}, line {bad[0] + 1}: expected pattern Gamma|Weibull with positive rate, shape and scale"
        )
    out = {k: v[active] for k, v in cols.items()}
    out["family"] = family[active]
    return out, window_s, float(starts.max() + window_s) if len(starts) else 0.0


def _parse_pmf(text: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Values and probabilities of a ``"{value: prob, ...}"`` string (fast path, literal_eval fallback)."""
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise UserError(f"{where}: expected a dict literal, got {s[:40]!r}")
    inner = s[1:-1].strip()
    if not inner:
        return np.zeros(0), np.zeros(0)
    pairs = inner.count(":")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = np.fromstring(inner.replace(":", ","), sep=",")
    except ValueError:
        flat = np.zeros(0)
    if len(flat) != 2 * pairs:
        try:
            d = ast.literal_eval(s)
            flat = np.array([x for kv in d.items() for x in kv], dtype=np.float64)
        except (ValueError, SyntaxError, TypeError) as e:
            raise UserError(f"{where}: malformed distribution ({e})") from None
    return flat[0::2], flat[1::2]


def _read_dataset_json(path: Path, client: int):
    """(client, window_start_s, field code, values, counts) per non-empty window and field, and the window length."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an object keyed by window start")
    parts = []
    try:
        starts = sorted(int(k) for k in data)
    except ValueError:
        raise UserError(f"{path}: window keys must be integer seconds, got {list(data)[:3]}") from None
    for key, fields in data.items():
        if not isinstance(fields, dict):
            raise UserError(f"{path}, window {key}: expected an object of fields")
        for name, text in fields.items():
            if name not in _FIELD_CODE:
                continue
            value, prob = _parse_pmf(str(text), f"{path}, window {key}, field {name}")
            keep = prob > 0
            if not keep.any():
                continue
            value, prob = value[keep], prob[keep]
            n_requests = np.round(1.0 / prob.min())
            parts.append((client, float(key), _FIELD_CODE[name], value, prob * n_requests))
    dw = float(np.min(np.diff(starts))) if len(starts) > 1 else None
    return parts, dw


_FIELD_CODE = {name: i for i, name in enumerate(FIELDS)}


def _assemble_pmfs(parts, clients) -> pd.DataFrame:
    """Window rows plus each client's whole-trace mixture and the population's, sorted for fast compiling."""
    sizes = np.array([len(p[3]) for p in parts])
    client = np.repeat([p[0] for p in parts], sizes).astype(np.int64)
    window = np.repeat([p[1] for p in parts], sizes).astype(np.float64)
    field = np.repeat([p[2] for p in parts], sizes).astype(np.int64)
    value = np.concatenate([p[3] for p in parts])
    count = np.concatenate([p[4] for p in parts])
    (wf, wc, wv), wn = count_by_keys([field, client, value], count)
    (pf, pv), pn = count_by_keys([field, value], count)
    population = len(clients)
    # Whole-trace rows sort after the windows (slot +inf), the population after every client.
    f = np.concatenate([field, wf, pf])
    c = np.concatenate([client, wc, np.full(len(pf), population)])
    w = np.concatenate([window, np.full(len(wf), np.inf), np.full(len(pf), np.inf)])
    v = np.concatenate([value, wv, pv])
    n = np.concatenate([count, wn, pn])
    order = np.lexsort((v, w, c, f))
    f, c, w, v, n = f[order], c[order], w[order], v[order], n[order]
    group_start = np.flatnonzero(np.r_[True, (f[1:] != f[:-1]) | (c[1:] != c[:-1]) | (w[1:] != w[:-1])])
    totals = np.add.reduceat(n, group_start)
    prob = n / np.repeat(totals, np.diff(np.r_[group_start, len(n)]))
    return pd.DataFrame(
        {
            "client_id": pd.Categorical.from_codes(c, categories=[*clients, POPULATION]),
            "window_start_s": np.where(np.isinf(w), float(WHOLE_TRACE), w),
            "field": pd.Categorical.from_codes(f, categories=list(FIELDS)),
            "value": v,
            "prob": prob,
            "count": n,
        }
    )
