"""The neural generator's conversation model: the trained heads behind the compose layer's TurnModel protocol.

:class:`NeuralConversationModel` answers what
:mod:`servegen_ml.conversations.sampling` and
:mod:`servegen_ml.conversations.likelihood` ask about the turn after
each turn (:class:`~servegen_ml.conversations.turns.Turns`) from the
heads of :mod:`servegen_ml.conversations.neural.heads`, evaluated in numpy
(:mod:`servegen_ml.conversations.neural.numpy_heads`). A conversation belongs to its
opener's client; a client the model has never seen (e.g. ``clients=new:N``)
is the mean client (the mean of the client vectors the heads read), as in
the neural likelihood.

``mean_turns`` (rate accounting for constant and curve targets) is measured
once at fit time per client by simulating the conversations of the
training openers with a fixed seed, counting the turns within the burn-in of
their opener (:func:`simulated_mean_turns`).

Files (in the neural checkpoint directory; no pickles):
``conversation.safetensors`` (the heads' state dict, ``client_rows`` — the
standardized client vectors, one row per client and a last one for unseen
clients — and ``mean_turns`` per row) and ``conversation.json`` (format,
clients, head sizes, normalizers, burn-in, training summary).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import save_file

from servegen_ml.conversations.neural.features import output_condition, turn_features
from servegen_ml.conversations.neural.numpy_heads import NumpyConversationHeads
from servegen_ml.conversations.turns import Turns
from servegen_ml.core.checkpoint_checks import check_array, check_ids, meta_field, read_safetensors
from servegen_ml.core.clients import client_codes
from servegen_ml.core.errors import CheckpointError
from servegen_ml.core.metafile import read_meta

WEIGHTS_FILE, META_FILE = "conversation.safetensors", "conversation.json"
FORMAT, VERSION = "servegen_ml.neural_conversation_model", 1
# Simulating mean turns: openers per client, and the turn at which a simulated conversation is ended.
SIMULATED_OPENERS, SIMULATED_MAX_TURNS = 2000, 500
SIMULATED_BATCH = 1 << 15  # openers simulated at once


class NeuralConversationModel:
    """A fitted neural conversation model (module docstring)."""

    def __init__(self, meta: dict, weights: dict[str, np.ndarray]):
        self.meta = meta
        self.weights = weights
        self.clients_ = tuple(meta["clients"])
        self.norm = meta["normalizers"]
        self.burn_in_s_ = float(meta["burn_in_s"])
        self.client_rows = np.asarray(weights["client_rows"], np.float64)
        self.mean_turns_ = np.asarray(weights["mean_turns"], np.float64)
        heads = {k: v for k, v in weights.items() if k not in ("client_rows", "mean_turns")}
        args = meta["heads"]
        self.heads = NumpyConversationHeads(
            heads, args["time_components"], args["mark_components"], self.norm["max_new_tokens"],
            self.norm["max_output_tokens"],
        )  # fmt: skip

    @property
    def population(self) -> int:
        """Code of the mean client (unseen clients)."""
        return len(self.clients_)

    def client_codes(self, client_ids) -> np.ndarray:
        """Codes of client ids; unknown ids get :attr:`population`."""
        return client_codes(self.clients_, client_ids)

    def features(self, turns: Turns) -> np.ndarray:
        return turn_features(
            self.client_rows[turns.code],
            turns.position,
            turns.input_tokens,
            turns.output_tokens,
            turns.timeline_s,
            self.norm,
        )

    # -- the TurnModel protocol -----------------------------------------------------------------

    def continue_prob_after(self, turns: Turns) -> np.ndarray:
        return self.heads.continue_prob(self.features(turns))

    def sample_gap_after(self, turns: Turns, rng: np.random.Generator) -> np.ndarray:
        return self.heads.sample_gap_s(self.features(turns), rng)

    def sample_new_tokens_after(self, turns: Turns, rng: np.random.Generator) -> np.ndarray:
        return self.heads.sample_new_tokens(self.features(turns), rng)

    def log_gap_after(self, turns: Turns, gap_s: np.ndarray) -> np.ndarray:
        return self.heads.log_gap(self.features(turns), gap_s)

    def log_sf_gap_after(self, turns: Turns, x_s: np.ndarray) -> np.ndarray:
        return self.heads.log_sf_gap(self.features(turns), x_s)

    def log_new_tokens_after(self, turns: Turns, new_tokens: np.ndarray) -> np.ndarray:
        return self.heads.log_new_tokens(self.features(turns), np.maximum(new_tokens, 0))

    # -- the follow-up's output (beyond the protocol; used by conversations.neural.marks) -----------

    def sample_output_after(
        self, turns: Turns, new_tokens, prompt_tokens, rng: np.random.Generator
    ) -> np.ndarray:
        """Output tokens of follow-ups of ``turns`` with these new tokens and grown prompts."""
        condition = output_condition(new_tokens, prompt_tokens, self.norm)
        return self.heads.sample_output(self.features(turns), condition, rng)

    def log_output_after(self, turns: Turns, new_tokens, prompt_tokens, output_tokens) -> np.ndarray:
        condition = output_condition(np.maximum(new_tokens, 0), prompt_tokens, self.norm)
        return self.heads.log_output(self.features(turns), condition, output_tokens)

    def mean_turns(self, client_ids, weights) -> float:
        code = self.client_codes(client_ids)
        weights = np.asarray(weights, dtype=np.float64)
        if len(code) == 0 or weights.sum() <= 0:
            return 1.0
        return float((self.mean_turns_[code] * weights).sum() / weights.sum())

    # -- files --------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        save_file({k: np.array(v, order="C") for k, v in self.weights.items()}, str(directory / WEIGHTS_FILE))
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=1, sort_keys=True) + "\n")

    @staticmethod
    def saved_in(directory: Path) -> bool:
        return (Path(directory) / META_FILE).is_file()

    @classmethod
    def load(cls, directory: Path) -> NeuralConversationModel:
        directory = Path(directory)
        meta = read_meta(directory / META_FILE, FORMAT, VERSION, "neural conversation model")
        weights_path = directory / WEIGHTS_FILE
        weights = read_safetensors(weights_path)
        for name, array in weights.items():
            check_array(array, weights_path, name, kind="i" if array.dtype.kind in "iu" else "f")
        clients = check_ids(
            meta_field(meta, "clients", directory / META_FILE, list), directory / META_FILE, "clients"
        )
        if "client_rows" in weights and weights["client_rows"].shape[0] != len(clients) + 1:
            raise CheckpointError(
                f"{weights_path}: 'client_rows' has {weights['client_rows'].shape[0]} rows, expected "
                f"{len(clients) + 1} (the clients of {META_FILE} and the population)"
            )
        return cls(meta, weights)


def simulated_mean_turns(
    model: NeuralConversationModel,
    opener_counts: np.ndarray,
    openers_at: Callable[[list[np.ndarray], int], Iterable[pd.DataFrame]],
    marks,
    seed: int,
) -> np.ndarray:
    """Mean turns per conversation of each client row (the last row: the opener-weighted mean over clients).

    Simulates the conversations of (up to SIMULATED_OPENERS per client of) the
    training openers with a fixed seed (``marks``: the generator's follow-up
    marks), counting the turns that come within ``burn_in_s`` of their opener:
    what the steady state of a sampled window holds (the sampler opens
    conversations from that far back). ``opener_counts`` (population,): openers
    per client code; ``openers_at(k, batch)``, k: each client code's ranks of
    openers (in arrival order), gives those openers in arrival order (timestamps
    on the learned timeline) in frames of ``batch`` rows, which are simulated one
    after the other on one random stream, so memory is set by the batch.
    """
    from servegen_ml.conversations.sampling import sample_follow_ups

    rng = np.random.default_rng(seed)
    picked = [rng.permutation(int(opener_counts[c]))[:SIMULATED_OPENERS] for c in range(model.population)]
    n = np.zeros(model.population + 1, dtype=np.int64)
    total = np.zeros(model.population + 1)
    for part in openers_at(picked, SIMULATED_BATCH):
        follow = sample_follow_ups(model, part, np.inf, 0.0, marks, rng, max_turns=SIMULATED_MAX_TURNS)
        offset_s = follow.timestamp - part["timestamp"].to_numpy(np.float64)[follow.conversation]
        counted = follow.conversation[offset_s < max(model.burn_in_s_, 0.0)]
        turns = 1.0 + np.bincount(counted, minlength=len(part))
        c = model.client_codes(part["client_id"].astype(str).to_numpy(dtype=object))
        n += np.bincount(c, minlength=len(n))
        total += np.bincount(c, weights=turns, minlength=len(n))
    n, total = n[: model.population], total[: model.population]
    per_client = np.where(n > 0, total / np.maximum(n, 1), 1.0)
    opened = np.asarray(opener_counts, np.float64)
    return np.r_[per_client, (per_client * opened).sum() / max(opened.sum(), 1.0)]
