"""dispatch-core: one cost-aware dispatch primitive for LLM, script and kernel workloads.

The engine here is pure (no Faust, no Kafka): ``engine.decide`` turns a task, a policy and
a ledger snapshot into a decision with full provenance; ``Dispatcher`` adds the Redis
ledger (atomic, idempotent budget reservations) and the per-service rollout.
"""

from dispatch_core.decision import BudgetState, Decision, Outcome, Trigger, decision_id_for
from dispatch_core.errors import DispatchError, LedgerError, LedgerUnavailable, PolicyError, TaskError
from dispatch_core.policy import Policy, load_policy
from dispatch_core.task import DEFAULT_SLA_MS, Features, Task, WorkloadClass, parse_task
from dispatch_core.version import __version__

__all__ = [
    "DEFAULT_SLA_MS",
    "BudgetState",
    "Decision",
    "DispatchError",
    "Features",
    "LedgerError",
    "LedgerUnavailable",
    "Outcome",
    "Policy",
    "PolicyError",
    "Task",
    "TaskError",
    "Trigger",
    "WorkloadClass",
    "__version__",
    "decision_id_for",
    "load_policy",
    "parse_task",
]
