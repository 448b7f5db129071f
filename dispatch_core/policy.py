"""The routing policy users write: tiers, complexity thresholds, force rules, budgets, triggers.

A policy is immutable once published. Its version is the SHA-256 of its canonical JSON form
(keys sorted, money as strings), so the same rules always carry the same version and a
service pinned to a version keeps its exact behaviour for as long as the version is stored.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dispatch_core.errors import PolicyError
from dispatch_core.task import Task, WorkloadClass

DEFAULT_POLICY_PATH = Path(__file__).parent / "policies" / "default.yaml"

_FROZEN = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
# Money fits the audit schema's decimal(18,6): with task features bounded to 10^5 cost units,
# the largest estimate is 10^4 + 10^4 x 10^5 < 10^12.
MAX_PRICE = Decimal(10_000)
MAX_LIMIT = Decimal(10**11)
_NAME = r"^[A-Za-z0-9._\-]+$"


class Tier(BaseModel):
    """One executor tier. Cost of a task = base_price + unit_price x the task's cost units."""

    model_config = _FROZEN

    name: str = Field(pattern=_NAME, max_length=100)
    executor: str = Field(pattern=_NAME, max_length=100, description="executor name; its Kafka topic derives from it")
    base_price: Decimal = Field(ge=0, le=MAX_PRICE, decimal_places=6)
    unit_price: Decimal = Field(ge=0, le=MAX_PRICE, decimal_places=6)
    p95_ms: float = Field(gt=0, description="expected p95 latency of the executor")


class Threshold(BaseModel):
    """Tasks whose complexity score is below ``upto`` (and above the previous one) get ``tier``."""

    model_config = _FROZEN

    upto: float = Field(gt=0, le=1)
    tier: str


class ComplexityModel(BaseModel):
    """How raw complexity is computed and normalised against a stream's rolling baseline.

    raw = sum(weight x ln(1 + feature)); the score is the normal CDF of raw's z-score
    against the EWMA mean/variance of the same (service, task type), or against the prior
    until ``warmup`` tasks have been seen.
    """

    model_config = _FROZEN

    weights: dict[Literal["tokens", "cpu_ms", "payload_bytes", "depth"], float]
    prior_mean: float
    prior_std: float = Field(gt=0)
    alpha: float = Field(default=0.05, gt=0, le=1, description="EWMA smoothing factor")
    warmup: int = Field(default=20, ge=0, description="tasks seen before the rolling baseline is trusted")
    min_std: float = Field(default=0.05, gt=0)


class Fallback(BaseModel):
    """Where a task goes after its executor fails with a retryable error (trigger ``executor_failure``).

    ``cheaper``: the next cheaper tiers, nearest first; ``more_capable``: the next more capable
    ones; ``chain``: the tiers named in ``chain``, in that order (e.g. a cost-sorted provider
    chain), after the one that failed. Every standard trigger still applies to the fallback,
    the deadline is measured from the task's creation, and a task gets at most ``max_attempts``
    decisions in all (the first included); then it is rejected, recorded.
    """

    model_config = _FROZEN

    direction: Literal["cheaper", "more_capable", "chain"] = "cheaper"
    chain: list[str] = Field(default_factory=list, max_length=32)
    max_attempts: int = Field(default=3, ge=1, le=10)

    @model_validator(mode="after")
    def _chain_named(self) -> Fallback:
        if (self.direction == "chain") != bool(self.chain):
            raise ValueError("a chain is given exactly when direction is 'chain'")
        return self


#: The fallback of a class whose policy has no ``fallback`` section.
DEFAULT_FALLBACK = Fallback()


class ClassPolicy(BaseModel):
    """Everything the policy says about one workload class."""

    model_config = _FROZEN

    tiers: list[Tier] = Field(min_length=1, description="ordered from cheapest to most capable")
    thresholds: list[Threshold] = Field(min_length=1)
    task_types: dict[str, list[Threshold]] = Field(default_factory=dict)
    complexity: ComplexityModel
    honour_requested_tier: bool = True
    # None: DEFAULT_FALLBACK. Left out of the canonical form when None, so policies written
    # before fallbacks existed keep their version.
    fallback: Fallback | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClassPolicy:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        unknown = [t for t in (self.fallback.chain if self.fallback else []) if t not in names]
        if unknown:
            raise ValueError(f"fallback.chain: unknown tiers {unknown}; tiers are {names}")
        for label, thresholds in [("thresholds", self.thresholds)] + [
            (f"task_types.{k}", v) for k, v in self.task_types.items()
        ]:
            bounds = [t.upto for t in thresholds]
            if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
                raise ValueError(f"{label}: 'upto' values must strictly increase, got {bounds}")
            if bounds[-1] < 1:
                raise ValueError(f"{label}: the last threshold must reach upto: 1.0, got {bounds[-1]}")
            for t in thresholds:
                if t.tier not in names:
                    raise ValueError(f"{label}: unknown tier {t.tier!r}; tiers are {names}")
        return self

    @property
    def fallback_rule(self) -> Fallback:
        return self.fallback or DEFAULT_FALLBACK

    def index(self, tier: str) -> int | None:
        """Position of a tier on the ladder (0 = cheapest), None if unknown."""
        for i, t in enumerate(self.tiers):
            if t.name == tier:
                return i
        return None


class Rule(BaseModel):
    """A policy rule that forces a tier for matching tasks (trigger ``policy``)."""

    model_config = _FROZEN

    id: str = Field(pattern=_NAME)
    workload: WorkloadClass
    service: str | None = None
    task_type: str | None = None
    tenant: str | None = None
    tier: str

    def matches(self, task: Task) -> bool:
        return (
            task.workload == self.workload
            and self.service in (None, task.service)
            and self.task_type in (None, task.task_type)
            and self.tenant in (None, task.tenant)
        )


Window = Literal["minute", "hour", "day", "month"]


class Budget(BaseModel):
    """A spending cap over a UTC calendar window.

    scope ``global`` applies to every task; ``service`` / ``tenant`` give every service /
    tenant its own cap (``match`` narrows it to one name). ``workload`` narrows to one class.
    """

    model_config = _FROZEN

    id: str = Field(pattern=_NAME, max_length=100)
    scope: Literal["global", "service", "tenant"]
    match: str | None = None
    workload: WorkloadClass | None = None
    window: Window
    limit: Decimal = Field(gt=0, le=MAX_LIMIT, decimal_places=6)
    soft_pct: float = Field(default=0.8, gt=0, le=1)

    @model_validator(mode="after")
    def _match_needs_scope(self) -> Budget:
        if self.scope == "global" and self.match is not None:
            raise ValueError("a global budget cannot have 'match'")
        return self

    def scope_key(self, task: Task) -> str | None:
        """The ledger scope this task charges under this budget, or None if it does not apply."""
        if self.workload is not None and task.workload != self.workload:
            return None
        if self.scope == "global":
            return "global"
        name = task.service if self.scope == "service" else task.tenant
        if name is None or self.match not in (None, name):
            return None
        return f"{self.scope}:{name}"


class TrendTrigger(BaseModel):
    """Pre-emptive demotion when spend projected to the window's end crosses the cap."""

    model_config = _FROZEN

    enabled: bool = True
    min_elapsed_pct: float = Field(default=0.1, ge=0, lt=1, description="no projection before this much of the window")
    hysteresis_pct: float = Field(default=0.05, ge=0, lt=1, description="clears only once projection is this far below the cap")


class LoadTrigger(BaseModel):
    """Demotion away from an executor that reports saturation."""

    model_config = _FROZEN

    enabled: bool = True
    saturation: float = Field(default=0.9, gt=0, le=1)
    max_age_s: float = Field(default=15.0, gt=0, description="older load reports are ignored")


class Triggers(BaseModel):
    model_config = _FROZEN

    trend: TrendTrigger = Field(default_factory=TrendTrigger)
    load: LoadTrigger = Field(default_factory=LoadTrigger)


class Policy(BaseModel):
    """A complete, immutable routing policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    classes: dict[WorkloadClass, ClassPolicy]
    rules: list[Rule] = Field(default_factory=list)
    # at most 32, with ids of at most 100 characters: what a routed task carries stays small
    budgets: list[Budget] = Field(default_factory=list, max_length=32)
    triggers: Triggers = Field(default_factory=Triggers)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        missing = [w.value for w in WorkloadClass if w not in self.classes]
        if missing:
            raise ValueError(f"classes: every workload class needs tiers; missing {missing}")
        executors = [t.executor for c in self.classes.values() for t in c.tiers]
        if len(set(executors)) != len(executors):
            raise ValueError(f"an executor may serve only one tier, got {executors}")
        for i, rule in enumerate(self.rules):
            if self.classes[rule.workload].index(rule.tier) is None:
                raise ValueError(f"rules.{i} ({rule.id}): unknown {rule.workload.value} tier {rule.tier!r}")
        ids = [b.id for b in self.budgets]
        if len(set(ids)) != len(ids):
            raise ValueError(f"budget ids must be unique, got {ids}")
        return self

    def canonical_json(self) -> str:
        """The form the version hashes: sorted keys, no whitespace, money as strings.

        Optional sections added after a policy could first be published (a class's ``fallback``)
        are left out when unset, so the same rules keep the version they were published under.
        """
        data = self.model_dump(mode="json")
        for cls in data["classes"].values():
            if cls.get("fallback") is None:
                cls.pop("fallback", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @cached_property
    def version(self) -> str:
        """SHA-256 of the canonical form: the policy's immutable identity."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def executors(self) -> list[str]:
        """Every executor the policy can route to (one Kafka topic each)."""
        return [t.executor for w in WorkloadClass for t in self.classes[w].tiers]

    def tier_of_executor(self, executor: str) -> tuple[WorkloadClass, Tier]:
        for w, cls in self.classes.items():
            for t in cls.tiers:
                if t.executor == executor:
                    return w, t
        raise PolicyError(f"no tier in policy {self.name} uses executor {executor!r}")


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate policy data; errors name the offending field (e.g. classes.llm.thresholds.1.tier)."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise PolicyError(f"{source} is invalid:\n" + "\n".join(lines)) from exc


def load_policy(path: Path | str | None = None) -> Policy:
    """Load and validate a policy file (YAML or JSON); None loads the packaged default."""
    file = Path(path) if path is not None else DEFAULT_POLICY_PATH
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {file}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{file} is not valid YAML/JSON: {exc}") from exc
    return parse_policy(data, source=str(file))


def policy_from_canonical(text: str) -> Policy:
    """Rebuild a published policy from its canonical JSON (as stored in the policy store)."""
    return parse_policy(json.loads(text), source="stored policy")
