"""Scale-out on a Ray cluster: many batches across machines, or one batch's layers split across
them (``docs/scale-out.md``). Ray is imported only when an executor is created."""

from hecnn.distributed.executor import JobStats, RayExecutor, TaskStats
from hecnn.distributed.split import SplitSchedule, plan_split

__all__ = ["JobStats", "RayExecutor", "SplitSchedule", "TaskStats", "plan_split"]
