"""GSPO (group sequence policy optimisation) for sequence models, as entity-managed training.

* pure, vectorised math: :func:`group_advantages`, :func:`gspo_loss` (``level="token"`` is GRPO);
* :class:`TinyCausalLM` (KV cache) and :func:`generate`, with log-probs from one code path
  (:func:`sequence_logprobs`); any Hugging Face causal LM plugs in through :class:`HFCausalLM`;
* verifiable toy tasks (:mod:`forseti.gspo.tasks`: ``target``, ``reverse``, ``count``) and the
  :class:`RewardFunction` protocol;
* :class:`GSPOTrainer`: runs, checkpoints (safetensors blobs) and events in a registry.

See ``docs/gspo.md``.
"""

from .checkpoint import load_training_state, load_weights, save_training_state, save_weights
from .entities import GSPOConfigEntity, GSPOTrainingRunEntity
from .events import GSPOStepCompleted, GSPOTrainingCompleted, GSPOTrainingStarted
from .generation import Generation, generate, sequence_logprobs, token_logprobs
from .loss import group_advantages, gspo_loss
from .model import CausalLM, HFCausalLM, LMOutput, TinyCausalLM, TinyLMConfigEntity
from .step import GSPOState, gspo_step
from .tasks import RewardFunction, Task, WeightedReward, get_task
from .trainer import GSPOTrainer

__all__ = [
    "group_advantages",
    "gspo_loss",
    "TinyCausalLM",
    "TinyLMConfigEntity",
    "CausalLM",
    "HFCausalLM",
    "LMOutput",
    "Generation",
    "generate",
    "sequence_logprobs",
    "token_logprobs",
    "Task",
    "RewardFunction",
    "WeightedReward",
    "get_task",
    "GSPOConfigEntity",
    "GSPOTrainingRunEntity",
    "GSPOTrainingStarted",
    "GSPOStepCompleted",
    "GSPOTrainingCompleted",
    "GSPOState",
    "gspo_step",
    "GSPOTrainer",
    "save_weights",
    "load_weights",
    "save_training_state",
    "load_training_state",
]
