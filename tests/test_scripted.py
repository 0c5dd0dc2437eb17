"""The task is real: a scripted approach-descend-close-lift policy lifts the cube."""

import jax

from panda_rl.envs.scripted import scripted_success_rate


def test_scripted_policy_succeeds_on_95_percent_of_random_resets(pick_env):
  result = scripted_success_rate(pick_env, 256, jax.random.PRNGKey(123))
  assert result["num_episodes"] == 256
  assert result["success_once"] >= 0.95, result
