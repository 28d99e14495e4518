"""servegen-ml characterize data.path=TRACE out=DIR — the ServeGen paper's analyses of a trace.

Streams the trace once (bounded memory) and writes DIR/report.md, DIR/stats.json
and PNG figures: arrival rate and burstiness over time, inter-arrival fits
(Exponential, Gamma, Weibull), index of dispersion, length distributions and
their shift over the day, client heterogeneity, and — when the trace has them —
multimodal, reasoning and conversation structure.
"""

from __future__ import annotations

import time

import numpy as np

from servegen_ml.characterize.accumulate import CharacterizeOptions
from servegen_ml.characterize.run import characterize_chunks, write_characterization
from servegen_ml.characterize.source import iter_chunks
from servegen_ml.commands.validate import adapter_options
from servegen_ml.core.outputs import check_output_dir


def run(cfg) -> int:
    check_output_dir(str(cfg.out))
    started = time.perf_counter()
    options = CharacterizeOptions(
        cv_window_s=float(cfg.cv_window_s),
        min_gaps=int(cfg.min_gaps),
        fit_sample=int(cfg.fit_sample),
        row_sample=int(cfg.row_sample),
        top_clients=int(cfg.top_clients),
        conversation_idle_s=float(cfg.conversation_idle_s),
        media_window_s=float(cfg.media_window_s),
    )
    chunks = iter_chunks(
        cfg.data.path,
        cfg.data.format,
        int(cfg.chunk_rows),
        bool(cfg.data.skip_bad_rows),
        **adapter_options(cfg.data),
    )
    stats, series = characterize_chunks(
        chunks, np.random.default_rng(int(cfg.seed)), options, str(cfg.data.path)
    )
    figures = write_characterization(stats, series, cfg.out, bool(cfg.figures))
    print(
        f"characterized {stats['trace']['requests']:,} requests in {time.perf_counter() - started:.1f} s: "
        f"{cfg.out}/report.md, stats.json and {len(figures)} figures"
    )
    return 0
