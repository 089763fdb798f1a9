"""GSPO as entities: the algorithm's settings and the training run, both versioned in a registry."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from ..entities import Entity, JSONMap, Name, TrainingRunEntity

__all__ = ["GSPOConfigEntity", "GSPOTrainingRunEntity"]


class GSPOConfigEntity(Entity):
    """Every setting of a GSPO run; stored with the run, so a run can be repeated exactly.

    Defaults follow the paper (Zheng et al. 2025) where it has them: ``eps_low=3e-4``,
    ``eps_high=4e-4``, four minibatches per rollout, no KL term; the rest (16 prompts × 8
    responses, Adam at 1e-3, gradient norm clipped at 1) are the settings under which the toy
    tasks learn from scratch on a CPU (see the GSPO docs page for measured curves).
    """

    entity_type: ClassVar[str] = "forseti.gspo.GSPOConfig"

    name: Name = "gspo"
    task: Name = Field(default="reverse", description="a task of forseti.gspo.tasks")
    task_params: JSONMap = Field(default_factory=dict, description="keyword arguments of the task")
    prompts_per_step: PositiveInt = Field(default=16, description="prompts per rollout (B)")
    group_size: int = Field(default=8, ge=2, description="responses per prompt (G >= 2)")
    minibatches: PositiveInt = Field(default=4, description="updates per rollout")
    eps_low: float = Field(default=3e-4, ge=0.0, lt=1.0, description="clip below 1 - eps_low")
    eps_high: float = Field(default=4e-4, ge=0.0, description="clip above 1 + eps_high")
    level: Literal["sequence", "sequence_token", "token"] = Field(
        default="sequence", description="'sequence' is GSPO, 'token' is GRPO"
    )
    adv_eps: PositiveFloat = Field(default=1e-4, description="added to the group std")
    beta: float = Field(default=0.0, ge=0.0, description="KL weight (0: no reference model)")
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(default=0.0, ge=0.0)
    grad_clip: PositiveFloat | None = Field(default=1.0, description="max gradient norm")
    max_new_tokens: PositiveInt | None = Field(
        default=None, description="response length limit (None: the task's suggestion)"
    )
    temperature: PositiveFloat = 1.0
    seed: int = 0
    checkpoint_every: NonNegativeInt = Field(
        default=0, description="steps between checkpoints (0: only at the end)"
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        total = self.prompts_per_step * self.group_size
        if self.minibatches > total:
            raise ValueError(
                f"minibatches={self.minibatches} is more than the {total} responses per rollout"
            )
        return self


class GSPOTrainingRunEntity(TrainingRunEntity):
    """A GSPO training run: its ``config`` is a :class:`GSPOConfigEntity` version, its ``model``
    the policy's :class:`~forseti.ModelEntity` version; ``step`` and ``metrics`` are updated at
    checkpoints and at the end."""

    entity_type: ClassVar[str] = "forseti.gspo.GSPOTrainingRun"

    algorithm: str = "gspo"
    task: str = ""
