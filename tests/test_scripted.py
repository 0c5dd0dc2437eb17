"""The task is real: a scripted approach-descend-close-lift policy lifts the cube.

Measured (jax 0.9.2, CPU): 251/256 = 98.0% with this test's key; 1008/1024 (98.4%) and
1015/1024 (99.1%) with keys 1 and 2: 98.7% over 2304 episodes. The sample here (256, to keep
the suite fast) resolves about one percentage point, so the bar is 97%: two episodes below the
measured rate, far above what a broken controller, grasp or reward would give.
"""

import jax

from panda_rl.envs.scripted import scripted_success_rate


def test_scripted_policy_succeeds_on_97_percent_of_random_resets(pick_env):
  result = scripted_success_rate(pick_env, 256, jax.random.PRNGKey(123))
  assert result["num_episodes"] == 256
  assert result["success_once"] >= 0.97, result
