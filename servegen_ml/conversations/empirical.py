"""The conversation model shared by the generators: openers, turns, inter-turn gaps, input growth (docs/conversations.md).

Roles (:func:`conversation_roles`). Rows sharing a ``conversation_id`` form a
conversation, ordered by arrival: the first row *opens* it, every later row
*follows* the row before it (its predecessor) at position k = 2, 3, ... A row
without an id (missing or empty) is a conversation of one. The fit
(:mod:`servegen_ml.conversations.fit`, streamed over time-sorted chunks)
also closes a conversation silent for more than 6 h: a later row with its id
opens a new one. Arrival order is
what :mod:`servegen_ml.stats.conversations` measures gaps on, so a branching
conversation (two turns answering one parent) is chained in arrival order.

What is fitted, per client (the client of the conversation's opener):

* **continuation hazard** ``h_k = P(turn k is followed by turn k + 1)``, i.e.
  the empirical turns-per-conversation distribution written as a hazard, with
  a pseudo-count of :data:`HAZARD_PRIOR` conversations at the client's overall
  continuation rate (so every ``h_k`` lies strictly inside (0, 1) and
  positions beyond the longest conversation use the overall rate);
* **inter-turn gap** (arrival of turn k to arrival of turn k + 1), empirical,
  in whole :data:`~servegen_ml.generators.base.TIME_RESOLUTION_S` steps,
  conditioned on the predecessor's output length through ``gap_buckets``
  quantile buckets (edges: quantiles of the predecessors' outputs over all
  follow-ups of the trace), each gap weighted for censoring (below);
* **new tokens** of a follow-up, ``input_k - input_{k-1} - output_{k-1}``,
  clipped at 0: a follow-up's prompt is the previous prompt, the previous
  answer and new user text. Traces whose recorded prefix does not hold the
  whole previous answer (Mooncake's hashed prefix: 11% of its follow-ups grow
  by less than the previous output) put those follow-ups at 0 new tokens, so
  generated follow-ups are slightly longer than real ones there;
* **opener share** (conversations / requests) and mean turns, for reports; and
  the **burn-in** ``burn_in_s``: the 99th percentile of the time from an
  opener to its later turns (at most :data:`MAX_BURN_IN_S`), how far before a
  spec's start the sampler opens conversations so that a generated window
  starts in the steady state, as a window cut from real traffic does.

Fallback: a client with fewer than ``min_conversations`` (30) conversations
uses the pooled (all-client) hazard; a client with fewer than
``min_follow_ups`` (20) follow-ups uses the pooled gap and new-token
distributions; a (client, output bucket) cell with fewer than
``min_follow_ups`` gaps uses the client's gaps over all buckets, then the
pooled bucket, then all pooled gaps. Clients the model has never seen (e.g.
``clients=new:N``) use the pooled model.

Censoring: a trace shows a gap ``g`` only when its predecessor came at least
``g`` before the end, so long gaps are under-represented; each gap is weighted
by ``1 / P(a request lies at least g before the end)`` (the share of the
trace's requests that do; the weight is capped at :data:`MAX_GAP_WEIGHT`). A
conversation still running when the trace ends looks shorter than it is: its
last turn, at ``t``, counts as a stop only with weight ``P(stop | no next turn
before the end) = (1 - h) / (1 - h + h * S(end - t))`` (``S``: the gap
survival; one EM step from the uncorrected hazard ``h``), the same term the
likelihood uses. Left truncation is not corrected: a conversation already
running when the trace starts looks like a new one there (as it does in the
windows the sampler generates, see ``burn_in_s``).

Likelihood-only smoothing is that of :mod:`servegen_ml.pool.empirical` (a
Good-Turing share of a discretized log-normal); sampling draws the empirical
distributions.

Files (:meth:`ConversationModel.write_into`): ``conversations.json``
(hyperparameters, clients, output bucket edges, burn-in),
``conversation_clients.parquet`` (per-client summary),
``conversation_hazards.parquet`` (conversations behind each ``h_k``),
``conversation_values.parquet`` (gap and new-token values: observation
counts and censoring-corrected weights). Client codes index the JSON's client
list; one past its end is the pooled model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import special

from servegen_ml.conversations.turns import Turns
from servegen_ml.core.checkpoint_checks import check_array
from servegen_ml.core.clients import client_codes
from servegen_ml.core.errors import CheckpointError, UserError
from servegen_ml.core.memory import release_freed_memory
from servegen_ml.core.metafile import read_meta
from servegen_ml.core.spec import TIME_RESOLUTION_S
from servegen_ml.pool.empirical import FieldTable, build_field_table

POPULATION = "*"
ALL_BUCKETS = -1
HAZARD_PRIOR = 1.0
GAP_MS, NEW_TOKENS = "gap_ms", "new_tokens"
MODEL_FILE = "conversations.json"
CLIENTS_FILE = "conversation_clients.parquet"
HAZARDS_FILE = "conversation_hazards.parquet"
VALUES_FILE = "conversation_values.parquet"
FORMAT, VERSION = "servegen_ml.conversation_model", 1
# Beyond the hazard table, the survival tail is summed over at most this many more turns.
TAIL_TURNS = 200
MAX_GAP_WEIGHT = 10.0
MAX_BURN_IN_S = 21_600.0


@dataclass(frozen=True)
class ConversationRoles:
    """Each row's place in its conversation (row indices refer to the trace's order)."""

    predecessor: np.ndarray  # (n,) row of the previous turn, -1 for an opener
    position: np.ndarray  # (n,) 1-based position in the conversation (arrival order)
    opener_row: np.ndarray  # (n,) row of the conversation's opener
    is_last: np.ndarray  # (n,) no later turn in the trace

    @property
    def is_opener(self) -> np.ndarray:
        return self.predecessor < 0


def conversation_roles(trace: pd.DataFrame) -> ConversationRoles:
    """Chain each conversation's rows in arrival order (see module docstring)."""
    n = len(trace)
    codes = np.arange(n, dtype=np.int64)
    if "conversation_id" in trace.columns and n:
        ids = trace["conversation_id"].reset_index(drop=True)
        found, _ = pd.factorize(ids, use_na_sentinel=True)
        found[(ids == "").fillna(False).to_numpy(dtype=bool)] = -1
        # Rows without an id get codes of their own, past the real ones.
        codes = np.where(found >= 0, found, found.max(initial=-1) + 1 + np.arange(n)).astype(np.int64)
    t = trace["timestamp"].to_numpy(np.float64)
    order = np.lexsort((np.arange(n), t, codes))
    same = codes[order][1:] == codes[order][:-1]
    predecessor = np.full(n, -1, dtype=np.int64)
    predecessor[order[1:][same]] = order[:-1][same]
    starts = np.r_[True, ~same] if n else np.zeros(0, bool)
    first_sorted = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n) - first_sorted + 1
    opener_row = np.empty(n, dtype=np.int64)
    opener_row[order] = order[first_sorted]
    is_last = np.empty(n, dtype=bool)
    is_last[order] = np.r_[~same, True] if n else np.zeros(0, bool)
    return ConversationRoles(predecessor, position, opener_row, is_last)


class ConversationModel:
    """Per-client conversation statistics; see the module docstring."""

    def __init__(self, gap_buckets: int = 4, min_conversations: int = 30, min_follow_ups: int = 20):
        if int(gap_buckets) < 1 or int(min_conversations) < 1 or int(min_follow_ups) < 1:
            raise UserError("gap_buckets, min_conversations and min_follow_ups must be positive integers")
        self.gap_buckets = int(gap_buckets)
        self.min_conversations = int(min_conversations)
        self.min_follow_ups = int(min_follow_ups)
        self.clients_: tuple[str, ...] = ()
        self.output_edges_ = np.zeros(0)
        self.burn_in_s_ = 0.0
        self.summary_: pd.DataFrame | None = None
        self.hazard_counts_: pd.DataFrame | None = None
        self.values_: pd.DataFrame | None = None

    # ------------------------------------------------------------ fitting

    def fit(self, trace: pd.DataFrame, client_ids: np.ndarray | None = None) -> ConversationModel:
        """Fit from a canonical trace sorted by time; ``client_ids`` overrides the client labels (one label: an
        aggregate model). The trace is one chunk of :class:`~servegen_ml.conversations.fit.ConversationFitter`."""
        from servegen_ml.conversations.fit import ConversationFitter

        fitter = ConversationFitter(
            gap_buckets=self.gap_buckets,
            min_conversations=self.min_conversations,
            min_follow_ups=self.min_follow_ups,
        )
        fitter.add(trace, client_ids)
        fitted = fitter.finish()
        if fitted is None:
            raise UserError("cannot fit a conversation model: the trace has no follow-up turns")
        self.__dict__.update(fitted.__dict__)
        return self

    # ------------------------------------------------------------ compiled lookups

    def _compile_tables(self) -> None:
        n_rows = len(self.clients_) + 1
        n_slots = len(self.output_edges_) + 2  # buckets, then all buckets
        self._tables: dict[str, FieldTable] = {}
        for name, slots in ((GAP_MS, n_slots), (NEW_TOKENS, 1)):
            rows = self.values_[self.values_["table"] == name]
            bucket = rows["bucket"].to_numpy(np.int64)
            slot = np.where(bucket == ALL_BUCKETS, slots - 1, bucket)
            self._tables[name] = build_field_table(
                rows["client"].to_numpy(np.int64),
                slot,
                rows["value"].to_numpy(np.float64),
                rows["weight"].to_numpy(np.float64),
                n_rows,
                slots,
                width=rows["width"].to_numpy(np.float64) if "width" in rows else None,
            )

    def _compile_hazards(self) -> None:
        df = self.hazard_counts_
        pop = len(self.clients_)
        k_max = int(df["position"].max())
        client = df["client"].to_numpy(np.int64)
        cont = np.zeros((pop + 1, k_max + 1))
        stop = np.zeros((pop + 1, k_max + 1))
        cont[client, df["position"].to_numpy()] = df["continued"].to_numpy()
        stop[client, df["position"].to_numpy()] = df["stopped"].to_numpy()
        # Add-half keeps the overall rate strictly inside (0, 1).
        overall = (cont.sum(axis=1) + 0.5) / (cont.sum(axis=1) + stop.sum(axis=1) + 1.0)
        hazard = (cont + HAZARD_PRIOR * overall[:, None]) / (cont + stop + HAZARD_PRIOR)
        # Column k_max + 1 is the tail: positions past every observed conversation.
        self._hazard = np.concatenate([hazard, overall[:, None]], axis=1)
        first = df["position"].to_numpy() == 1
        n_conv = np.bincount(client[first], weights=df["reached"].to_numpy()[first], minlength=pop + 1)
        self._own_hazard = np.r_[n_conv[:pop] >= self.min_conversations, True]

    @property
    def is_fitted(self) -> bool:
        return self.values_ is not None

    @property
    def population(self) -> int:
        """Group code of the pooled model (one past the last client)."""
        return len(self.clients_)

    def client_codes(self, client_ids) -> np.ndarray:
        """Codes of client ids; unknown ids get :attr:`population`."""
        return client_codes(self.clients_, client_ids)

    def hazard_group(self, code: np.ndarray) -> np.ndarray:
        """The hazard row a client uses (its own, or the pooled one)."""
        return np.where(self._own_hazard[code], code, self.population)

    def output_bucket(self, output_tokens: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.output_edges_, np.asarray(output_tokens), side="right").astype(np.int64)

    def continue_prob(self, group: np.ndarray, position: np.ndarray) -> np.ndarray:
        """h at ``position`` for hazard rows ``group`` (see :meth:`hazard_group`)."""
        column = np.minimum(np.asarray(position, np.int64), self._hazard.shape[1] - 1)
        return self._hazard[group, column]

    def _resolve(
        self, name: str, code: np.ndarray, bucket: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(table group, client row whose whole distribution smooths it) with the fallback order of the docstring."""
        table = self._tables[name]
        whole = table.group_of.shape[1] - 1
        pop = np.full(len(code), self.population)
        tries = [(code, np.full(len(code), whole)), (pop, np.full(len(code), whole))]
        if bucket is not None:
            tries = [(code, bucket), tries[0], (pop, bucket), tries[1]]
        group = np.full(len(code), -1, dtype=np.int64)
        owner = pop.copy()
        for c, s in tries:
            found = table.group_of[c, s]
            take = (group < 0) & (found >= 0)
            group[take], owner[take] = found[take], c[take]
        return group, owner

    # ------------------------------------------------------------ sampling

    def sample_gap_s(self, code: np.ndarray, prev_output: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Inter-turn gaps in seconds (uniform inside each resolution step)."""
        group, _ = self._resolve(GAP_MS, code, self.output_bucket(prev_output))
        steps = self._tables[GAP_MS].sample(group, rng)
        return (steps + rng.random(len(code))) * TIME_RESOLUTION_S

    def sample_new_tokens(self, code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        group, _ = self._resolve(NEW_TOKENS, code, None)
        return self._tables[NEW_TOKENS].sample(group, rng).astype(np.int64)

    # ------------------------------------------------------------ likelihood pieces

    def log_gap(self, code: np.ndarray, prev_output: np.ndarray, gap_s: np.ndarray) -> np.ndarray:
        """log P(gap in its resolution step) (smoothed)."""
        group, owner = self._resolve(GAP_MS, code, self.output_bucket(prev_output))
        steps = np.floor(np.maximum(gap_s, 0.0) / TIME_RESOLUTION_S + 1e-6)
        return self._tables[GAP_MS].log_pmf(group, owner, steps)

    def log_sf_gap(self, code: np.ndarray, prev_output: np.ndarray, x_s: np.ndarray) -> np.ndarray:
        """log P(gap >= x) (smoothed as :meth:`log_gap`)."""
        group, owner = self._resolve(GAP_MS, code, self.output_bucket(prev_output))
        steps = np.floor(np.maximum(x_s, 0.0) / TIME_RESOLUTION_S + 1e-6)
        table = self._tables[GAP_MS]
        eps = table.eps[group]
        with np.errstate(divide="ignore"):
            z = (np.log(steps + 0.5) - table.client_mu[owner]) / table.client_sigma[owner]
        sf_smooth = np.where(steps <= 0, 1.0, special.ndtr(-z))
        sf = (1.0 - eps) * _empirical_sf(table, group, steps) + eps * sf_smooth
        with np.errstate(divide="ignore"):
            return np.log(np.clip(sf, 0.0, 1.0))

    def log_new_tokens(self, code: np.ndarray, new_tokens: np.ndarray) -> np.ndarray:
        group, owner = self._resolve(NEW_TOKENS, code, None)
        return self._tables[NEW_TOKENS].log_pmf(group, owner, np.maximum(new_tokens, 0))

    # ------------------------------------------------------------ the TurnModel protocol (conversations.turns)

    def continue_prob_after(self, turns: Turns) -> np.ndarray:
        return self.continue_prob(self.hazard_group(turns.code), turns.position)

    def sample_gap_after(self, turns: Turns, rng: np.random.Generator) -> np.ndarray:
        return self.sample_gap_s(turns.code, turns.output_tokens, rng)

    def sample_new_tokens_after(self, turns: Turns, rng: np.random.Generator) -> np.ndarray:
        return self.sample_new_tokens(turns.code, rng)

    def log_gap_after(self, turns: Turns, gap_s: np.ndarray) -> np.ndarray:
        return self.log_gap(turns.code, turns.output_tokens, gap_s)

    def log_sf_gap_after(self, turns: Turns, x_s: np.ndarray) -> np.ndarray:
        return self.log_sf_gap(turns.code, turns.output_tokens, x_s)

    def log_new_tokens_after(self, turns: Turns, new_tokens: np.ndarray) -> np.ndarray:
        return self.log_new_tokens(turns.code, new_tokens)

    # ------------------------------------------------------------ rate accounting

    def mean_turns(self, client_ids, weights) -> float:
        """Expected turns per conversation (= requests per opener in the steady state), weighted over clients."""
        code = self.client_codes(client_ids)
        weights = np.asarray(weights, dtype=np.float64)
        if len(code) == 0 or weights.sum() <= 0:
            return 1.0
        group = self.hazard_group(code)
        turn = np.arange(1, self._hazard.shape[1] + TAIL_TURNS)
        survival = np.cumprod(self.continue_prob(group[:, None], turn[None, :]), axis=1)  # P(T > turn)
        return float(((1.0 + survival.sum(axis=1)) * weights).sum() / weights.sum())

    # ------------------------------------------------------------ persistence

    def write_into(self, directory: Path) -> None:
        directory = Path(directory)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "gap_buckets": self.gap_buckets,
            "min_conversations": self.min_conversations,
            "min_follow_ups": self.min_follow_ups,
            "clients": list(self.clients_),
            "output_bucket_edges_tokens": [float(x) for x in self.output_edges_],
            "burn_in_s": self.burn_in_s_,
            "time_resolution_s": TIME_RESOLUTION_S,
            "units": {
                "gap_ms": "inter-turn gap in 1 ms steps",
                "new_tokens": "tokens",
                "mean_gap_s": "s",
                "burn_in_s": "s",
            },
            "client_codes": "client = index into clients; len(clients) is the pooled model; bucket -1 = all buckets",
        }
        (directory / MODEL_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        pq.write_table(pa.Table.from_pandas(self.summary_, preserve_index=False), directory / CLIENTS_FILE)
        pq.write_table(
            pa.Table.from_pandas(self.hazard_counts_, preserve_index=False), directory / HAZARDS_FILE
        )
        pq.write_table(pa.Table.from_pandas(self.values_, preserve_index=False), directory / VALUES_FILE)

    @staticmethod
    def saved_in(directory: Path) -> bool:
        return (Path(directory) / MODEL_FILE).is_file()

    @classmethod
    def load(cls, directory: Path) -> ConversationModel:
        directory = Path(directory)
        meta = read_meta(directory / MODEL_FILE, FORMAT, VERSION, "conversation model")
        model = cls(meta["gap_buckets"], meta["min_conversations"], meta["min_follow_ups"])
        model.clients_ = tuple(meta["clients"])
        model.output_edges_ = np.asarray(meta["output_bucket_edges_tokens"], dtype=np.float64)
        model.burn_in_s_ = float(meta["burn_in_s"])
        model.summary_ = _read(directory / CLIENTS_FILE)
        model.hazard_counts_ = _read(directory / HAZARDS_FILE)
        model.values_ = _read(directory / VALUES_FILE)
        model._compile_tables()
        model._compile_hazards()
        return model


def _empirical_sf(table: FieldTable, group: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """P(V >= steps) under each group's empirical distribution."""
    entry_group = np.repeat(np.arange(table.n_groups), np.diff(table.group_start))
    keys = entry_group.astype(np.float64) * 2.0**33 + table.values
    idx = np.searchsorted(keys, group.astype(np.float64) * 2.0**33 + steps, side="left")
    inside = idx < table.group_start[group + 1]
    before = table.cdf_before[np.minimum(idx, len(keys) - 1)] - group
    sf = np.where(inside, 1.0 - before, 0.0)
    if table.width is None:
        return sf
    # A binned entry below ``steps`` may reach past it: the part of its mass at or above ``steps``.
    prev = np.maximum(idx - 1, 0)
    top = table.values[prev] + table.width[prev]
    covers = (idx > table.group_start[group]) & (top > steps)
    mass = table.cdf[prev] - table.cdf_before[prev]
    return sf + np.where(covers, mass * (top - steps) / table.width[prev], 0.0)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CheckpointError(f"conversation model file {path} is missing")
    try:
        # Column by column, each Arrow column freed once converted: the table is never held twice.
        table = pq.read_table(path).to_pandas(split_blocks=True, self_destruct=True)
        release_freed_memory()  # the conversion's freed pages are not needed again
    except (pa.ArrowException, OSError) as e:
        raise CheckpointError(f"{path}: corrupt Parquet ({e})") from None
    for name in table.columns:
        if pd.api.types.is_float_dtype(table[name]):
            values = table[name].to_numpy()
            if name == "mean_gap_s" and "follow_ups" in table.columns:
                # A client without follow-ups has no gap to average: NaN there, and only there.
                values = values[table["follow_ups"].to_numpy() > 0]
            check_array(values, path, f"column {name}")
    return table
