"""Retrain-equivalence: the forget score of the NeurIPS 2023 unlearning challenge.

Unlearning succeeds for a record when no test can tell models unlearned from the original
model apart from models retrained without the record (Triantafillou et al. 2024, "Are we
making progress in unlearning?"; Hayes et al. 2024 on per-example attacks). For each forget
record, a membership statistic is measured on N unlearned models (different seeds of the
unlearning algorithm, one original model) and N retrained models (different training seeds).
Every threshold rule on that statistic is an attack; from its false positive and false
negative rates an (epsilon, delta) bound follows,

    epsilon >= max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR)),

and the record's epsilon is the largest over all thresholds, in both directions (a high or a
low statistic may be what gives unlearned models away). Records are
scored by the bucket their epsilon falls in (width 0.5): ``2 / 2**n`` for bucket n = 1, 2, ...,
so a record no rule can separate scores 1 and each further half-unit of epsilon halves it.
The forget score is the mean over records (1: indistinguishable from retraining).

With N models a side, a rate can only be measured down to 1/N: rates of 0 count as 1/N (the
resolution of the sample), so epsilon is capped at log(N - 1) (3.4 for N = 32) and the score
at ``2 / 2**(1 + floor(log(N - 1) / 0.5))`` for a record every rule separates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DELTA = 1e-5
BIN_WIDTH = 0.5


def record_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> float:
    """The largest epsilon any threshold rule on this statistic certifies for one record."""
    u = np.asarray(unlearned, dtype=float).ravel()
    r = np.asarray(retrained, dtype=float).ravel()
    if len(u) < 2 or len(r) < 2:
        raise ValueError(f"need at least 2 models a side, got {len(u)} unlearned and {len(r)} retrained")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("the statistic has non-finite values")
    thresholds = np.unique(np.concatenate([u, r, [-np.inf]]))
    # Rule "unlearned when s > tau": a retrained model called unlearned is a false positive; the
    # complementary rule ("unlearned when s <= tau") covers the other direction of the statistic.
    above_r = (r[None, :] > thresholds[:, None]).mean(1)
    above_u = (u[None, :] > thresholds[:, None]).mean(1)
    fpr = np.maximum(np.concatenate([above_r, 1 - above_r]), 1.0 / len(r))
    fnr = np.maximum(np.concatenate([1 - above_u, above_u]), 1.0 / len(u))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1 - delta - fpr, 0, None)) - np.log(fnr)
        b = np.log(np.clip(1 - delta - fnr, 0, None)) - np.log(fpr)
    eps = np.nanmax(np.concatenate([a, b]))
    return float(max(eps, 0.0)) if np.isfinite(eps) else 0.0


def bucket_points(epsilon: float, bin_width: float = BIN_WIDTH) -> float:
    """``2 / 2**n`` for the bucket n (from 1) that epsilon falls in."""
    return 2.0 / 2.0 ** (1 + math.floor(epsilon / bin_width))


@dataclass
class ForgetScore:
    statistic: str
    n_unlearned: int
    n_retrained: int
    epsilons: list[float] = field(default_factory=list)

    @property
    def score(self) -> float:
        return float(np.mean([bucket_points(e) for e in self.epsilons])) if self.epsilons else math.nan

    @property
    def floor(self) -> float:
        """The score of records every rule separates, at this sample size."""
        n = min(self.n_unlearned, self.n_retrained)
        return bucket_points(math.log(n - 1)) if n > 2 else math.nan


def forget_score(unlearned: np.ndarray, retrained: np.ndarray, statistic: str, delta: float = DELTA) -> ForgetScore:
    """``unlearned`` ``[N_u, R]`` and ``retrained`` ``[N_r, R]``: one row per model, one column per record."""
    u, r = np.asarray(unlearned, dtype=float), np.asarray(retrained, dtype=float)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
        raise ValueError(f"statistics must be [models, records] with the same records, got {u.shape} and {r.shape}")
    out = ForgetScore(statistic=statistic, n_unlearned=u.shape[0], n_retrained=r.shape[0])
    out.epsilons = [record_epsilon(u[:, j], r[:, j], delta) for j in range(u.shape[1])]
    return out


def combined_score(scores: list[ForgetScore]) -> ForgetScore:
    """Several statistics at once: each record takes the largest epsilon any of them certifies."""
    if not scores:
        raise ValueError("no statistics to combine")
    eps = np.max(np.array([s.epsilons for s in scores]), axis=0)
    return ForgetScore(
        statistic="+".join(s.statistic for s in scores),
        n_unlearned=min(s.n_unlearned for s in scores),
        n_retrained=min(s.n_retrained for s in scores),
        epsilons=[float(e) for e in eps],
    )


@dataclass
class RetrainPosition:
    """Where one model's per-record statistic sits among N retrained models' (lower: member-like).

    ``percentiles[j]``: the share of retrained models that denoise record j *better* than the model
    does (ties count half). Near 0 the model is more member-like than every retrained model (the
    record is still remembered), near 1 less (over-forgotten: the record stands out as deleted).
    A model drawn from the retrained distribution lands outside the retrained models' range on a
    record with probability 2 / (N + 1): ``expected_within`` is what retrain-equivalence looks like.
    """

    statistic: str
    n_retrained: int
    percentiles: list[float]
    below: float  # share of records more member-like than every retrained model
    above: float  # share of records less member-like than every retrained model

    @property
    def within(self) -> float:
        return 1.0 - self.below - self.above

    @property
    def expected_within(self) -> float:
        return 1.0 - 2.0 / (self.n_retrained + 1)

    @property
    def median_percentile(self) -> float:
        return float(np.median(self.percentiles))

    def to_dict(self) -> dict:
        return {
            "statistic": self.statistic,
            "n_retrained": self.n_retrained,
            "within": self.within,
            "expected_within": self.expected_within,
            "below": self.below,
            "above": self.above,
            "median_percentile": self.median_percentile,
            "percentiles": self.percentiles,
        }


def retrain_position(model: np.ndarray, retrained: np.ndarray, statistic: str) -> RetrainPosition:
    """``model`` ``[R]``: one model's error per record; ``retrained`` ``[N, R]``: N retrained models'."""
    m, r = np.asarray(model, dtype=float), np.asarray(retrained, dtype=float)
    if m.ndim != 1 or r.ndim != 2 or r.shape[1] != m.shape[0]:
        raise ValueError(f"need a [records] row and a [models, records] table, got {m.shape} and {r.shape}")
    if r.shape[0] < 2:
        raise ValueError(f"a retrained distribution needs at least 2 retrained models, got {r.shape[0]}")
    if not (np.isfinite(m).all() and np.isfinite(r).all()):
        raise ValueError("the statistic has non-finite values")
    pct = ((r < m[None, :]).sum(0) + 0.5 * (r == m[None, :]).sum(0)) / r.shape[0]
    return RetrainPosition(
        statistic=statistic,
        n_retrained=r.shape[0],
        percentiles=[float(p) for p in pct],
        below=float((m < r.min(0)).mean()),
        above=float((m > r.max(0)).mean()),
    )
