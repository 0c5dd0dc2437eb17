"""What the run loop (panda_rl.runner) asks of a trainer, for the tests' fake trainers."""

import types

import jax


class RunLoopTrainer:
  """Mixin: a one-device placement, an iteration compiled on first use, restore targets and
  checkpoint metadata, on top of a fake's ``init`` and ``train_iteration``."""

  placement = types.SimpleNamespace(single_device=True, collocated=True, single_process=True,
                                    describe=lambda: "one device")

  def initial_key(self, seed):
    return jax.random.PRNGKey(seed)  # one seed (runner.num_seeds = 1)

  def compile_iteration(self, state):
    return self.train_iteration, None

  def compile_evaluation(self, state, key):
    return 0.0  # the fakes' evaluations compile on first use

  def abstract_state(self, key):
    return jax.eval_shape(self.init, key)

  def fetch(self, tree):
    return jax.device_get(tree)

  def to_checkpoint(self, state):
    return state

  def from_checkpoint(self, state):
    return state

  def checkpoint_target(self, key):
    return self.abstract_state(key)

  def checkpoint_meta(self):
    return {"observation_size": self.env.observation_size,
            "action_size": self.env.action_size}
