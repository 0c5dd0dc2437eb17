"""A batched env stepped shard by shard: every device steps its own envs, alone.

Under ``jax.jit`` with the env batch split over several devices (the placement's
``P("batch")``), XLA's SPMD partitioner treats the batched physics as one program over the
whole batch. Wherever MJX or a wrapper decides something for the whole batch -- the
constraint solver's ``while_loop`` (vmapped, it runs until every env has converged), the
auto-reset's ``cond`` on "did any env finish" -- it inserts an all-reduce, and every device
waits for the slowest at each solver iteration of each substep.

:func:`shard_step` runs a batched step under ``jax.shard_map`` instead (and
:class:`ShardedEnv` is a batched env whose ``step`` does): each device runs the same step on
its own B / n envs and decides those loops and conds for them alone. Nothing changes in the
results: an env's physics never depends on another env's (a vmapped ``while_loop`` freezes
the envs that have converged, a reset touches only the envs that finished), so every env
steps exactly as it would unsplit; tests compare the states bit for bit. What changes is
that the n devices no longer meet inside a step.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh, PartitionSpec as P

from panda_rl.envs.base import EnvState, Wrapper

Array = jax.Array
Step = Callable[[EnvState, Array], EnvState]


def shard_step(step: Step, mesh: Mesh, axis: str = "batch") -> Step:
  """``step`` (batched ``(state [B], action [B, A]) -> state [B]``) run per device of ``mesh``.

  ``step`` must work on any batch size (vmapped steps and the batched wrappers' do) and
  return a state of the same structure as its input. A call whose batch does not divide
  over the mesh's ``axis`` (e.g. one pipeline stage of an odd size), or whose state holds a
  leaf that is not per env (no leading batch axis), runs ``step`` unsplit.
  """
  shards = int(mesh.shape[axis])
  split = P(axis)

  def stepped(state: EnvState, action: Array) -> EnvState:
    batch = action.shape[0]
    per_env = all(x.ndim and x.shape[0] == batch for x in jax.tree.leaves(state))
    if shards == 1 or batch % shards or not per_env:
      return step(state, action)
    specs = jax.tree.map(lambda _: split, state)
    # check_vma=False: MJX's conds return constants on one side, which shard_map's
    # replication check cannot type; every leaf here is per env (split) anyway.
    return jax.shard_map(step, mesh=mesh, in_specs=(specs, split), out_specs=specs,
                         check_vma=False)(state, action)

  return stepped


class ShardedEnv(Wrapper):
  """A batched env (``AutoResetWrapper``, the GRPO group wrapper) whose ``step`` runs per
  device of ``mesh`` (:func:`shard_step`); everything else is the wrapped env's."""

  def __init__(self, env, mesh: Mesh, axis: str = "batch"):
    super().__init__(env)
    self.mesh, self.axis = mesh, axis
    self._step = shard_step(env.step, mesh, axis)

  def step(self, state: EnvState, action: Array) -> EnvState:
    self.check_action(action)
    return self._step(state, action)
