"""Inputs of the neural conversation heads (numpy; shared by training, sampling and scoring).

See :mod:`servegen_ml.conversations.neural.heads` for the model.
"""

from __future__ import annotations

import numpy as np

from servegen_ml.core.spec import wrap_time
from servegen_ml.neural import features as F

# Share of a lattice gap's jitter given to a uniform over the whole slot (values never seen in training).
JITTER_FLOOR = 1e-3


def feature_names(client_dim: int, day_harmonics: int, week_harmonics: int) -> list[str]:
    names = [f"client_{i}" for i in range(client_dim)] + ["z_output", "z_input", "log_position"]
    for period, k in (("day", day_harmonics), ("week", week_harmonics)):
        names += [f"{f}_{period}_{i}" for i in range(1, k + 1) for f in ("sin", "cos")]
    return names


def turn_features(
    client_rows: np.ndarray,
    position: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    timeline_s: np.ndarray,
    norm: dict,
) -> np.ndarray:
    """(n, features) float32 inputs of turns; client_rows (n, D) standardized client vectors.

    ``norm``: the normalizers of :func:`servegen_ml.conversations.neural.fit.fit_turn_normalizers`.
    """
    z_out = (np.log1p(np.asarray(output_tokens, np.float64)) - norm["turn_output_mean"]) / norm[
        "turn_output_std"
    ]
    z_in = (np.log1p(np.asarray(input_tokens, np.float64)) - norm["turn_input_mean"]) / norm["turn_input_std"]
    log_pos = np.log(np.clip(np.asarray(position, np.float64), 1.0, norm["max_position"]))
    t = wrap_time(np.asarray(timeline_s, np.float64), norm["span_s"])
    cols = [z_out, z_in, log_pos] + F.fourier(np, t, norm["day_harmonics"], norm["week_harmonics"])
    return np.column_stack([np.asarray(client_rows, np.float64)] + cols).astype(np.float32)


def n_raw(time_components: int, mark_components: int, n_spikes: int, n_output_spikes: int) -> tuple[int, ...]:
    """Raw outputs of the continue, gap, new-token and output heads."""
    return (
        1,
        1 + 3 * time_components,
        n_spikes + 1 + 3 * mark_components,
        n_output_spikes + 1 + 3 * mark_components,
    )


def output_condition(new_tokens: np.ndarray, prompt_tokens: np.ndarray, norm: dict) -> np.ndarray:
    """(n, 2) float32: what the follow-up's output head sees beyond the turn before (its new tokens, its prompt)."""
    z_new = (np.log1p(np.asarray(new_tokens, np.float64)) - norm["new_mean"]) / norm["new_std"]
    z_prompt = (np.log1p(np.asarray(prompt_tokens, np.float64)) - norm["turn_input_mean"]) / norm[
        "turn_input_std"
    ]
    return np.column_stack([z_new, z_prompt]).astype(np.float32)
