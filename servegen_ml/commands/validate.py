"""servegen-ml validate data.path=PATH [data.format=auto] [data.skip_bad_rows=false]

Check a trace file against the canonical schema and print a summary: rows,
clients, span, mean rate, fields present, and conversation figures (count,
follow-up share, mean turns) when the trace has them. The file is streamed in
chunks of ``chunk_rows`` rows, so memory stays bounded. Exit 0 when the trace
is valid; exit 2 with every problem (file, row, column; the first 20 rows of
each kind plus a count) when it is not. With ``data.skip_bad_rows=true`` bad
rows are counted by kind instead and the exit code is 0.

Format options go under ``data`` with a leading ``+``, e.g.
``+data.client_by=model`` (burstgpt) or ``+data.client_id=NAME`` (native).
"""

from __future__ import annotations

from pathlib import Path

from servegen_ml.core.config import config_dir
from servegen_ml.core.errors import UserError
from servegen_ml.trace.io import TraceReader
from servegen_ml.trace.summary import TraceSummary, format_summary


def adapter_options(data_cfg) -> dict:
    """Format options: the keys added under ``data`` (``+data.KEY=``) beyond the data group's own keys."""
    from omegaconf import OmegaConf

    group_keys = set(OmegaConf.load(config_dir() / "data" / "default.yaml"))
    return {k: v for k, v in data_cfg.items() if k not in group_keys}


def run(cfg) -> int:
    if Path(cfg.data.path).is_dir():
        raise UserError(
            f"{cfg.data.path}: a directory; to sample a ServeGen pool use 'servegen-ml convert ... out=FILE'"
        )
    reader = TraceReader(
        cfg.data.path,
        cfg.data.format,
        int(cfg.chunk_rows),
        bool(cfg.data.skip_bad_rows),
        collect=True,
        **adapter_options(cfg.data),
    )
    summary = TraceSummary()
    for chunk in reader:
        summary.add(chunk)
    report = reader.finish()
    print(f"trace: {cfg.data.path} (format {reader.format})")
    print(format_summary(summary.result()))
    if report.rows_dropped:
        print(f"skipped: {report.describe()}")
    if report.resorted_rows or report.globally_unsorted:
        print("note: rows are not sorted by timestamp; readers sort them (stable)")
    return 0
