"""servegen-ml convert data.path=PATH out=FILE [data.format=auto] [start_s= duration_s= seed=]

Write a trace (any supported format) or a sample of a ServeGen client pool
(a ``chunk-N-*`` directory) as a canonical trace; the output format follows
the extension of ``out`` (.parquet, .csv, .jsonl). The output is written
atomically: on any error nothing is written. Files are converted chunk by
chunk with bounded memory; a file whose rows go back in time across chunks is
read whole and sorted instead (with a warning).

For a ServeGen pool, ``start_s``, ``duration_s`` (required) and ``seed`` pick
the sampled span. For a file, ``start_s``/``duration_s`` keep only rows in
``[start_s, start_s + duration_s)``. Format options go under ``data`` with a
leading ``+``, e.g. ``+data.client_by=model``.
"""

from __future__ import annotations

from servegen_ml.commands.validate import adapter_options
from servegen_ml.core.errors import UserError
from servegen_ml.core.outputs import check_output_file
from servegen_ml.pool import convert_source
from servegen_ml.trace.summary import format_summary


def run(cfg) -> int:
    check_output_file(str(cfg.out))
    options = adapter_options(cfg.data)
    span = {}
    # train and export take the sampled span under data (+data.start_s=...): accept that spelling too.
    for key in ("start_s", "duration_s", "seed"):
        under_data = options.pop(key, None)
        if under_data is not None and cfg.get(key) is not None:
            raise UserError(f"convert: {key} is given twice ({key}= and +data.{key}=); give it once")
        span[key] = cfg.get(key) if under_data is None else under_data
    summary, report = convert_source(
        cfg.data.path,
        cfg.out,
        cfg.data.format,
        bool(cfg.data.skip_bad_rows),
        chunk_rows=int(cfg.chunk_rows),
        **span,
        **options,
    )
    print(f"wrote {cfg.out}")
    print(format_summary(summary))
    if report is not None and report.rows_dropped:
        print(f"skipped: {report.describe()}")
    return 0
