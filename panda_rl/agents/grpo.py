"""GRPO: group-relative advantages and the critic-free clipped-ratio loss (pure functions).

Groups and rounds (see :class:`panda_rl.envs.groups.GroupAutoResetWrapper`): the B envs
form B / G groups of G envs that start every episode from one shared initial state. A
*round* of a group runs from one group reset to the next; each member plays one episode in
it, and a member that finishes early waits, its steps marked ``step_valid = 0``.

Advantage of every step of member i's episode in a round (all its steps up to the
episode's end; none of its waiting steps)::

    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)     with group_std_norm
    A_i =  R_i - mean_j R_j                          without

R_i the (undiscounted, ``reward_scale``-d) return of member i's episode, mean and std
(ddof 0) over the G members of the round, eps = :data:`STD_EPS`. A round whose G returns
are all equal gives A = 0 exactly (no learning signal, and no division of rounding noise).

Rollouts and rounds: a step enters the loss only if its group's round *completed* within
the rollout (otherwise its return is not known yet) and the env really stepped. The
trainer therefore starts every GRPO iteration from freshly reset groups and requires
``rollout.num_steps >= `` the env's ``episode_length``: every member's episode then ends,
and so every group's first round completes, within the iteration. With ``num_steps = k *
episode_length`` each group completes at least k rounds; a round still running at the end
of the rollout (a group that finished early and restarted) is left out of the loss and
discarded (the next iteration starts from fresh groups again).

The loss averages over the valid samples of a minibatch (a per-step mean, not a
per-episode one). The optional KL penalty is to a frozen reference policy: the policy's
initial parameters, kept in ``TrainState.ref_params`` (so a pretrained reference could be
put there instead), evaluated on the same normalised observations. The KL is the exact,
closed-form KL(pi_theta(.|s) || pi_ref(.|s)) between the two diagonal Gaussians at each
visited state, rather than LLM-GRPO's sampled "k3" estimator (pi_ref/pi - log(pi_ref/pi) - 1
at the sampled action): for Gaussians the exact value costs nothing, has no sampling
variance and gives the exact gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from panda_rl import metrics as M
from panda_rl.agents.base import Algorithm, IterationKeys, flatten_time
from panda_rl.envs.base import Env
from panda_rl.envs.groups import GROUP_RESET, STEP_VALID, GroupAutoResetWrapper
from panda_rl.networks import gaussian_entropy, gaussian_kl, gaussian_log_prob

Array = jax.Array
STD_EPS = 1e-4  # added to the group std before dividing (as TRL's GRPO)


def group_advantages(episode_return: Array, group_reset: Array, step_valid: Array,
                     group_size: int, std_norm: bool = True, eps: float = STD_EPS,
                     reward_scale: float = 1.0) -> Tuple[Array, Array, Dict[str, Array]]:
  """Group-relative advantages broadcast over each member's episode.

  Args:
    episode_return: [T, B] running episode return after step t; at a step where the group
      was reset (``group_reset``), each member's return of the round that just ended (a
      waiting member's totals stay frozen at its finished episode's).
    group_reset: [T, B] 1.0 where the env's group was reset after step t (the round ended).
      Equal within a group.
    step_valid: [T, B] 1.0 where the env really stepped (0 while waiting for its group).
    group_size: G; envs ``b`` with the same ``b // G`` form a group.
    std_norm: divide by the group's return std (+ eps).
    eps: added to the std.
    reward_scale: multiplies the returns before the advantages (not the reported stats).

  Returns:
    (advantages [T, B], mask [T, B], stats): mask is 1.0 on the steps that enter the loss
    (valid, in a round that completed), advantages are 0 elsewhere; stats holds
    ``rollout/group_return_std``, ``rollout/zero_spread_groups`` (NaN when no round
    completed) and ``rollout/valid_fraction``.
  """
  t, b = episode_return.shape
  if b % group_size:
    raise ValueError(f"batch of {b} envs does not split into groups of {group_size}")
  returns = episode_return.reshape(t, b // group_size, group_size)
  std = jnp.std(returns, axis=-1, keepdims=True)  # in env reward units, for the stats
  spread = jnp.max(returns, axis=-1, keepdims=True) - jnp.min(returns, axis=-1, keepdims=True)
  scaled = returns * reward_scale
  dev = scaled - jnp.mean(scaled, axis=-1, keepdims=True)
  round_adv = dev / (std * abs(reward_scale) + eps) if std_norm else dev
  round_adv = jnp.where(spread > 0, round_adv, 0.0).reshape(t, b)

  ends = group_reset > 0.5

  def backward(carry, xs):
    next_adv, next_complete = carry
    adv, end = xs
    adv = jnp.where(end, adv, next_adv)  # a step takes the advantage of its round's end
    complete = end | next_complete
    return (adv, complete), (adv, complete)

  init = (jnp.zeros((b,), round_adv.dtype), jnp.zeros((b,), bool))
  _, (adv, complete) = jax.lax.scan(backward, init, (round_adv, ends), reverse=True)
  mask = (complete & (step_valid > 0.5)).astype(episode_return.dtype)
  adv = adv * mask

  round_end = ends.reshape(t, b // group_size, group_size)[..., 0].astype(jnp.float32)
  stats = {
      M.GROUP_RETURN_STD: M.weighted_mean(std[..., 0], round_end),
      M.ZERO_SPREAD_GROUPS: M.weighted_mean((spread[..., 0] <= 0).astype(jnp.float32),
                                            round_end),
      M.VALID_FRACTION: jnp.mean(mask),
  }
  return adv, mask, stats


class GRPOBatch(NamedTuple):
  """One (mini)batch of GRPO training data; every field has leading axis [N].

  Attributes:
    obs: [N, ...] observations as the policy saw them (already normalised).
    actions: [N, A] actions taken (unclipped Gaussian samples).
    old_log_prob: [N] log-probability of ``actions`` under the rollout policy.
    advantages: [N] group advantages (0 where ``mask`` is 0).
    mask: [N] 1.0 for samples in the loss, 0.0 for waiting steps and unfinished rounds.
    ref_mean: [N, A] the reference policy's Gaussian mean at ``obs``.
    ref_log_std: [N, A] the reference policy's log std at ``obs``.
  """

  obs: Any
  actions: Array
  old_log_prob: Array
  advantages: Array
  mask: Array
  ref_mean: Array
  ref_log_std: Array


def grpo_loss(params: Dict[str, Any], apply_fns: Any, batch: GRPOBatch, key: Array, *,
              clip_ratio: float = 0.2, entropy_coef: float = 0.0, kl_beta: float = 0.0,
              normalize_advantages: bool = False) -> Tuple[Array, Dict[str, Array]]:
  """GRPO's loss on one minibatch: clipped ratio objective + KL to reference - entropy.

  Args:
    params: ``{"policy": ...}`` (no value network).
    apply_fns: has ``policy_apply(policy_params, obs) -> (mean [N, A], log_std [N, A])``.
    batch: :class:`GRPOBatch` with leading axis [N].
    key: unused (entropy and KL are exact); kept so every loss has one signature.
    clip_ratio: epsilon of the probability-ratio clip.
    entropy_coef: weight of the entropy bonus (subtracted from the total).
    kl_beta: weight of the KL(pi || pi_ref) penalty.
    normalize_advantages: standardise advantages over the minibatch's valid samples (off
      for GRPO normally: group advantages are normalised already).

  Returns:
    (loss [], metrics): ``train/*`` scalars named in :mod:`panda_rl.metrics`
    (:data:`~panda_rl.metrics.GRPO_TRAIN_METRICS` but grad_norm and lr, which the optimiser
    step adds). Every mean is over the valid samples (``mask``); 0 if there are none.
  """
  del key
  mean, log_std = apply_fns.policy_apply(params["policy"], batch.obs)
  log_prob = gaussian_log_prob(mean, log_std, batch.actions)
  entropy = gaussian_entropy(log_std)
  ref_kl = gaussian_kl(mean, log_std, batch.ref_mean, batch.ref_log_std)

  w = batch.mask
  n = jnp.maximum(jnp.sum(w), 1.0)
  avg = lambda x: jnp.sum(w * x) / n

  adv = batch.advantages
  if normalize_advantages:
    mu = avg(adv)
    adv = (adv - mu) / (jnp.sqrt(avg(jnp.square(adv - mu))) + 1e-8)

  # Masked samples (waiting steps) get ratio 1: nothing from them can overflow.
  log_ratio = jnp.where(w > 0, log_prob - batch.old_log_prob, 0.0)
  ratio = jnp.exp(log_ratio)
  clipped = jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
  policy_loss = avg(jnp.maximum(-adv * ratio, -adv * clipped))
  kl = avg(ref_kl)
  entropy_loss = avg(entropy)
  loss = policy_loss + kl_beta * kl - entropy_coef * entropy_loss

  sg = jax.lax.stop_gradient
  metrics = {
      M.APPROX_KL: sg(avg(-log_ratio)),
      M.CLIP_FRACTION: sg(avg((jnp.abs(ratio - 1.0) > clip_ratio).astype(jnp.float32))),
      M.CLIPPED_RATIO: sg(avg(clipped)),
      M.POLICY_LOSS: sg(policy_loss),
      M.REF_KL: sg(kl),
      M.ENTROPY_LOSS: sg(entropy_loss),
      M.LOSS: sg(loss),
  }
  return loss, metrics


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def episode_length(env: Env) -> Any:
  """The env's fixed maximum episode length (time limit), or None if it declares none."""
  env = env.unwrapped
  n = getattr(env, "episode_length", None)
  if n is None and hasattr(env, "config"):
    n = env.config.get("episode_length", None)
  return None if n is None else int(n)


@dataclasses.dataclass(frozen=True)
class GRPO(Algorithm):
  """GRPO (``algorithm.adv_type = "grpo"``): groups sharing a start, no critic.

  Every iteration starts from freshly reset groups and plays whole episodes (see the module
  docstring); the frozen reference policy (the initial one) lives in ``TrainState.ref_params``.
  """

  name: str = "grpo"
  needs_value: bool = False
  fresh_envs: bool = True
  iteration_metrics: Tuple[str, ...] = M.GRPO_ITERATION_METRICS
  group_size: int = 8
  group_std_norm: bool = True
  clip_ratio: float = 0.2
  entropy_coef: float = 0.0
  kl_beta: float = 0.0
  normalize_advantages: bool = False

  @classmethod
  def from_config(cls, alg: Any) -> "GRPO":
    return cls(reward_scale=float(alg.reward_scale), group_size=int(alg.group_size),
               group_std_norm=bool(alg.group_std_norm), clip_ratio=float(alg.clip_ratio),
               entropy_coef=float(alg.entropy_coef), kl_beta=float(alg.kl_beta),
               normalize_advantages=bool(alg.normalize_advantages))

  @staticmethod
  def config_problems(config: Any) -> List[str]:
    alg, num_envs = config.algorithm, config.env.train.num_envs
    group_size = alg.get("group_size", None)
    if not _is_int(group_size) or group_size < 2:
      return [f"algorithm.group_size must be an int >= 2 for GRPO (advantages compare the "
              f"members of a group), got {group_size!r}"]
    out = []
    if _is_int(num_envs) and num_envs >= 1 and num_envs % group_size:
      out.append(f"env.train.num_envs = {num_envs} must be divisible by algorithm.group_size "
                 f"= {group_size}: GRPO resets the envs in groups of group_size that share "
                 "one initial state")
    if alg.get("kl_beta", 0.0) < 0.0:
      out.append(f"algorithm.kl_beta must be >= 0, got {alg.kl_beta}")
    return out

  def env_problems(self, config: Any, env: Env) -> List[str]:
    """GRPO needs whole episodes in every rollout (see the module docstring)."""
    env_id, num_steps = config.env.train.env_id, config.rollout.num_steps
    length = episode_length(env)
    if length is None:
      return [f"GRPO needs an env with a fixed time limit (an `episode_length`), so that "
              f"every episode ends within an iteration; {env_id} declares none"]
    if _is_int(num_steps) and num_steps < length:
      return [f"rollout.num_steps = {num_steps} is shorter than {env_id}'s episode_length = "
              f"{length}: GRPO needs whole episodes (each iteration starts fresh groups and "
              f"only episodes that end within it have a return). Set "
              f"--config.rollout.num_steps={length} (or a multiple, for several rounds per "
              f"iteration)."]
    return []

  def wrap_env(self, env: Env, num_envs: int) -> Env:
    return GroupAutoResetWrapper(env, num_envs, self.group_size)

  @property
  def stage_block(self) -> int:
    return self.group_size

  def valid_steps(self, traj):
    return traj.episode[STEP_VALID]

  def iteration_keys(self, key):
    k_next, k_reset, k_rollout, k_update = jax.random.split(key, 4)
    return IterationKeys(k_next, k_reset, k_rollout, k_update)

  def start_rollout(self, env, env_state, key):
    # Fresh groups every iteration, so that each group's round (one episode per member)
    # starts and ends inside this rollout.
    del env_state
    return env.reset(key)

  def init_extra(self, params):
    # The frozen reference policy: the initial policy (a copy, its own buffers).
    return jax.tree.map(jnp.copy, params["policy"])

  def make_batch(self, networks, state, traj, obs):
    advantages, mask, group_stats = group_advantages(
        traj.episode["episode_return"], traj.episode[GROUP_RESET], traj.episode[STEP_VALID],
        self.group_size, std_norm=self.group_std_norm, reward_scale=self.reward_scale)
    obs = jax.tree.map(flatten_time, obs)
    ref_mean, ref_log_std = networks.policy_apply(state.ref_params, obs)
    batch = GRPOBatch(obs=obs, actions=flatten_time(traj.action),
                      old_log_prob=flatten_time(traj.log_prob),
                      advantages=flatten_time(advantages), mask=flatten_time(mask),
                      ref_mean=ref_mean, ref_log_std=ref_log_std)
    # Waiting steps repeat a frozen final observation; rewards are averaged over the steps
    # envs really took, advantages over the steps in the loss.
    metrics = M.rollout_metrics(traj.reward, advantages, reward_mask=self.valid_steps(traj),
                                advantage_mask=mask)
    metrics.update(group_stats)
    return batch, advantages, metrics

  def loss(self, params, networks, batch, key):
    return grpo_loss(params, networks, batch, key, clip_ratio=self.clip_ratio,
                     entropy_coef=self.entropy_coef, kl_beta=self.kl_beta,
                     normalize_advantages=self.normalize_advantages)
