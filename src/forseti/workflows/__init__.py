"""Workflows: DAGs of registered callables with concurrency, compensation and resume.

>>> import forseti as fs
>>> reg = fs.open("memory://")
>>> @fs.callable("double")
... def double(x: int) -> int:
...     return 2 * x
>>> wf = fs.Workflow("demo")
>>> a = wf.step(double, name="a", x=1)
>>> b = wf.step(double, name="b", x=a)
>>> wf.run(reg)["b"]
4
"""

from .entities import StepState, StepStatus, WorkflowEntity, WorkflowRunEntity, WorkflowStatus
from .events import WorkflowCompleted, WorkflowFailed, WorkflowStarted
from .model import Step, StepOutput, Workflow, WorkflowFailedError, WorkflowResult

__all__ = [
    "Workflow",
    "Step",
    "StepOutput",
    "WorkflowResult",
    "WorkflowFailedError",
    "WorkflowEntity",
    "WorkflowRunEntity",
    "StepState",
    "StepStatus",
    "WorkflowStatus",
    "WorkflowStarted",
    "WorkflowCompleted",
    "WorkflowFailed",
]
