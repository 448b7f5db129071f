"""Complexity: a raw score from the task's features, normalised against its stream's history.

"Complex" means complex relative to what this (service, task type) usually sends, so one
policy serves a chatty summariser and a heavy code generator alike. The rolling baseline is
an EWMA of mean and variance kept in Redis; ``update_baseline`` here and the commit Lua
script (``dispatch_core/lua/commit.lua``) compute the same thing, so the engine can plan a
batch ahead of the commit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dispatch_core.policy import ComplexityModel
from dispatch_core.task import Task


@dataclass(frozen=True, slots=True)
class Baseline:
    """Rolling complexity of one stream: count, EWMA mean and EWMA variance."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0


@dataclass(frozen=True, slots=True)
class Complexity:
    """The score (0..1) and everything it was computed from, for the provenance record."""

    score: float
    raw: float
    inputs: dict[str, float]
    ref_mean: float
    ref_std: float
    baseline_n: int


def raw_complexity(task: Task, model: ComplexityModel) -> tuple[float, dict[str, float]]:
    """Weighted sum of ln(1 + feature) over the features the class's model uses."""
    inputs: dict[str, float] = {name: float(getattr(task.features, name) or 0) for name in model.weights}
    raw = math.fsum(w * math.log1p(inputs[name]) for name, w in model.weights.items())
    return raw, inputs


def score(task: Task, model: ComplexityModel, baseline: Baseline) -> Complexity:
    """Normal CDF of the raw complexity's z-score against the baseline (or the prior in warm-up)."""
    raw, inputs = raw_complexity(task, model)
    if baseline.n < max(model.warmup, 1):
        mean, std = model.prior_mean, model.prior_std
    else:
        mean, std = baseline.mean, max(math.sqrt(baseline.var), model.min_std)
    z = (raw - mean) / std
    value = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    return Complexity(value, raw, inputs, mean, std, baseline.n)


def update_baseline(baseline: Baseline, raw: float, model: ComplexityModel) -> Baseline:
    """One EWMA step; the first observation starts from the prior."""
    if baseline.n == 0:
        mean, var = model.prior_mean, model.prior_std**2
    else:
        mean, var = baseline.mean, baseline.var
    delta = raw - mean
    a = model.alpha
    return Baseline(baseline.n + 1, mean + a * delta, (1 - a) * (var + a * delta * delta))
