"""Learning algorithms: advantage estimators, losses (pure functions), the SGD loop, and
the :class:`~panda_rl.agents.base.Algorithm` objects the trainer runs.

``make(config)`` is the only place that reads ``algorithm.adv_type``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Type

from panda_rl.agents.base import Algorithm, IterationKeys  # noqa: F401
from panda_rl.agents.grpo import GRPO
from panda_rl.agents.ppo import PPO

ALGORITHMS: Dict[str, Type[Algorithm]] = {"gae": PPO, "grpo": GRPO}


def algorithm_class(config: Any) -> Type[Algorithm] | None:
  """The class named by ``config.algorithm.adv_type`` (None if unknown)."""
  return ALGORITHMS.get(config.algorithm.get("adv_type", "gae"))


def config_problems(config: Any) -> List[str]:
  """Problems of ``algorithm.adv_type`` and of the fields that algorithm reads."""
  cls = algorithm_class(config)
  if cls is None:
    return [f"algorithm.adv_type must be one of {tuple(ALGORITHMS)}, got "
            f"{config.algorithm.get('adv_type')!r}"]
  return cls.config_problems(config)


def make(config: Any) -> Algorithm:
  """The :class:`Algorithm` of ``config.algorithm`` (its hyperparameters read once)."""
  cls = algorithm_class(config)
  if cls is None:
    raise ValueError(config_problems(config)[0])
  return cls.from_config(config.algorithm)
