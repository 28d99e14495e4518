"""The learning curve of a training run: a PNG next to Lightning's CSV log.

Lightning's ``CSVLogger`` writes ``metrics.csv`` with one row per logged step
(``train_nll_step``), per epoch (``train_nll_epoch``) and per validation
(``val_nll``), each row holding only the columns logged at that time. The
figure plots every NLL column that has values against the global step, so a
run that did not train, or did not learn, is visible at a glance. A resumed run
logs into a new ``version_N`` beside the earlier ones (its steps continue
theirs): the figure draws them all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FIGURE = "learning_curve.png"
# Columns plotted, in this order, with their labels.
CURVES = {
    "train_nll_step": "train NLL (per logged step)",
    "train_nll_epoch": "train NLL (epoch mean)",
    "val_nll": "validation NLL",
}


def write_learning_curve(metrics_csv: Path) -> Path | None:
    """Write ``learning_curve.png`` beside ``metrics_csv``; None when the log has no NLL values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = []
    for path in _run_logs(metrics_csv):
        log = pd.read_csv(path)
        if "step" not in log.columns:
            raise ValueError(f"{path}: no 'step' column; not a Lightning CSV log")
        logs.append(log)
    log = pd.concat(logs, ignore_index=True)
    curves = {c: log[["step", c]].dropna() for c in CURVES if c in log.columns}
    curves = {c: d for c, d in curves.items() if len(d)}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for column, data in curves.items():
        style = "-" if len(data) > 1 else "o"
        ax.plot(data["step"].to_numpy(), data[column].to_numpy(np.float64), style, label=CURVES[column])
    if "val_nll" in curves:
        best = curves["val_nll"].loc[curves["val_nll"]["val_nll"].idxmin()]
        ax.axvline(
            best["step"], color="grey", lw=0.8, ls=":", label=f"best validation ({best['val_nll']:.4g})"
        )
    ax.set_xlabel("global step")
    ax.set_ylabel("NLL per event (nats)")
    ax.set_title("/".join(metrics_csv.parts[-4:-1]))  # run fingerprint/logs/version (the latest)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = metrics_csv.parent / FIGURE
    tmp = out.with_name(f".{FIGURE}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out)  # atomic
    return out


def _run_logs(metrics_csv: Path) -> list[Path]:
    """``metrics_csv`` after the logs of the same run's earlier versions (``version_0`` ... before it)."""

    def number(path: Path) -> int | None:
        name = path.parent.name
        return int(name[len("version_") :]) if name.startswith("version_") and name[8:].isdigit() else None

    current = number(metrics_csv)
    if current is None:
        return [metrics_csv]
    earlier = [
        p for p in metrics_csv.parent.parent.glob("version_*/metrics.csv") if (number(p) or 0) < current
    ]
    return sorted(earlier, key=number) + [metrics_csv]
