"""servegen-ml export data.path=TRACE format=FMT out=FILE

Write a trace in the format of a load generator or simulator (docs/exports.md),
sorted by arrival with the first request at 0, plus ``FILE.meta.json`` (source,
format, field units, row count, package version, rules used):

  native    the canonical schema; .parquet, .jsonl or .csv by the extension of out
  mooncake  JSONL: timestamp (int ms), input_length, output_length, hash_ids
            (512-token blocks; a follow-up turn begins with its predecessor's
            complete blocks) -- vLLM bench serve, aiperf mooncake_trace, guidellm
  bailian   JSONL: chat_id, parent_chat_id (-1 first turn), timestamp (s),
            input_length, output_length, type, turn, hash_ids (16-token blocks) -- aiperf
  vidur     CSV: arrived_at (s), num_prefill_tokens, num_decode_tokens -- Vidur
  azure     CSV: TIMESTAMP (%Y-%m-%d %H:%M:%S.%f from 2024-01-01 00:00:00),
            ContextTokens, GeneratedTokens -- inference-perf

The input is any trace servegen-ml reads (data.format=auto detects it); a
ServeGen pool needs ``+data.duration_s=S`` (and optionally ``+data.start_s``,
``+data.seed``). Output files are written atomically.
"""

from __future__ import annotations

from servegen_ml.commands.validate import adapter_options
from servegen_ml.core.errors import UserError
from servegen_ml.export import FORMATS, export_trace, meta_path
from servegen_ml.pool import read_source


def run(cfg) -> int:
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format!r}: choose one of {', '.join(FORMATS)}")
    trace = read_source(
        cfg.data.path, cfg.data.format, bool(cfg.data.skip_bad_rows), **adapter_options(cfg.data)
    )
    meta = {"source": str(cfg.data.path), "source_format": str(cfg.data.format)}
    out = export_trace(trace, cfg.out, cfg.format, meta=meta)
    span_s = float(trace["timestamp"].max() - trace["timestamp"].min()) if len(trace) else 0.0
    print(f"wrote {out} ({cfg.format}, {len(trace)} requests over {span_s:.1f} s) and {meta_path(out)}")
    return 0
