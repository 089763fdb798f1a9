"""A robust data-parallel step: per-worker gradients in, one robust update out.

``RobustStep`` takes the ``n`` workers' gradients (an ``(n, d)`` tensor, per-parameter
``(n, *shape)`` tensors, or a mapping of them, as :func:`per_worker_gradients` returns), applies
worker momentum if asked, aggregates with a rule, writes the aggregate into the parameters'
``.grad`` and steps the optimizer, and updates a :class:`ReputationLedger` when one is given.
:func:`per_worker_gradients` computes all workers' gradients with one ``torch.func.vmap`` of
``torch.func.grad`` over a functional call of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import ConfigError, ValidationError
from ._tensors import as_matrix
from .base import Aggregator, check_number
from .distances import sq_distances_to
from .ledger import ReputationLedger, RoundReport
from .result import AggResult

__all__ = ["RobustStep", "StepOutcome", "per_worker_gradients"]


@dataclass(frozen=True)
class StepOutcome:
    """One robust step: the aggregation's result and, with a ledger, its round report."""

    result: AggResult
    report: RoundReport | None


class RobustStep:
    """Aggregate per-worker gradients robustly and apply the result with ``optimizer``.

    ``momentum`` is *worker* momentum (each worker sends ``m_i <- beta m_i + (1 - beta) g_i``),
    which Karimireddy et al. show is what makes robust rules work with stochastic gradients.
    ``transform`` (optional) edits the stacked vectors before aggregation, e.g. to simulate
    Byzantine workers in an evaluation; the ledger sees what the rule saw. With
    ``exclude_suspects`` the ledger's current suspects are left out of the aggregation (counted
    against the rule's ``f``, like workers that sent Inf/NaN) until they are cleared.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        aggregator: Aggregator,
        *,
        momentum: float = 0.0,
        ledger: ReputationLedger | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        exclude_suspects: bool = False,
    ) -> None:
        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ConfigError("RobustStep needs at least one parameter that requires grad")
        if not isinstance(aggregator, Aggregator):
            raise ConfigError(f"aggregator must be a forseti.consensus rule; got {aggregator!r}")
        momentum = check_number(momentum, "momentum", minimum=0.0, maximum=1.0, open_above=True)
        self.optimizer, self.aggregator = optimizer, aggregator
        if exclude_suspects and ledger is None:
            raise ConfigError("exclude_suspects needs a ledger (it says who the suspects are)")
        self.momentum, self.ledger, self.transform = float(momentum), ledger, transform
        self.exclude_suspects = bool(exclude_suspects)
        self.dim = sum(p.numel() for p in self.params)
        self._buffers: torch.Tensor | None = None

    def __call__(self, gradients: Any) -> StepOutcome:
        g = self._stack(gradients)
        if self.ledger is not None and self.ledger.n != g.shape[0]:
            raise ValidationError(
                f"the ledger tracks {self.ledger.n} workers; got gradients from {g.shape[0]}"
            )
        if self.momentum:
            if self._buffers is None or self._buffers.shape != g.shape:
                self._buffers = g.clone()
            else:
                self._buffers.mul_(self.momentum).add_(g, alpha=1 - self.momentum)
            g = self._buffers
        if self.transform is not None:
            g = self.transform(g.clone())  # the buffers and the caller's tensors stay intact
            if not isinstance(g, torch.Tensor) or g.dim() != 2 or g.shape[1] != self.dim:
                shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise ValidationError(
                    f"transform must return an (n, {self.dim}) tensor; got {shape}"
                )
            if self.ledger is not None and g.shape[0] != self.ledger.n:
                raise ValidationError(
                    f"transform returned {g.shape[0]} vectors; the ledger tracks {self.ledger.n}"
                )
        excluded = self._suspects(g)
        if excluded:
            # Known suspects are masked as non-finite: the rule drops them and counts them
            # against f (see forseti.consensus.base); the ledger still sees what they sent.
            masked = g.clone()
            masked[list(excluded)] = float("nan")
            result = self.aggregator(masked)
        else:
            result = self.aggregator(g)
        offset = 0
        for p in self.params:
            k = p.numel()
            p.grad = result.vector[offset : offset + k].reshape(p.shape).to(p.dtype).clone()
            offset += k
        self.optimizer.step()
        report = None
        if self.ledger is not None:
            seen = result
            if excluded:  # score the excluded on what they really sent, so they can recover
                scores = result.scores.clone()
                scores[list(excluded)] = sq_distances_to(g[list(excluded)], result.vector).to(
                    scores.dtype
                )
                seen = replace(result, scores=scores)
            report = self.ledger.update(g, seen)
        return StepOutcome(result, report)

    def _suspects(self, g: torch.Tensor) -> tuple[int, ...]:
        if not self.exclude_suspects or self.ledger is None:
            return ()
        suspects = tuple(i for i in self.ledger.suspects if i < g.shape[0])
        if len(suspects) >= g.shape[0]:
            return ()
        return suspects

    def _stack(self, gradients: Any) -> torch.Tensor:
        if isinstance(gradients, Mapping):
            gradients = list(gradients.values())
        g, _ = as_matrix(gradients, what="gradients")
        if g.shape[1] != self.dim:
            raise ValidationError(
                f"the gradients have {g.shape[1]} coordinates per worker; the parameters have "
                f"{self.dim}"
            )
        return g


def per_worker_gradients(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every worker's gradient of ``loss_fn(model(inputs[i]), targets[i])`` in one vmap.

    ``inputs`` and ``targets`` carry the worker on their first dimension (``(n, batch, ...)``).
    Returns ``{name: (n, *param.shape)}`` for the parameters that require grad, in the model's
    order (the layout :class:`RobustStep` expects).
    """

    if inputs.shape[0] != targets.shape[0]:
        raise ValidationError(
            f"inputs and targets must have the same number of workers; got {inputs.shape[0]} "
            f"and {targets.shape[0]}"
        )
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, (p, buffers), (x,))
        return loss_fn(out, y)

    grads: dict[str, torch.Tensor] = torch.func.vmap(
        torch.func.grad(loss), in_dims=(None, 0, 0)
    )(params, inputs, targets)
    return grads
