"""The one place that names the training metrics and defines what each number means.

Every metric a training iteration reports is a key of :data:`DEFINITIONS`; the code that
computes them (``agents/ppo.py``, ``agents/grpo.py``, ``agents/sgd.py``,
:func:`rollout_metrics`, :func:`episode_metrics`, ``Trainer.evaluate``) uses the constants
below, never a string literal, so a rename happens here or nowhere. Loggers, the CLI smoke
test and the docs read an algorithm's ``iteration_metrics`` (:data:`ITERATION_METRICS` for
PPO, :data:`GRPO_ITERATION_METRICS` for GRPO, which has no critic) / :data:`EVAL_METRICS`;
``env/reward_terms/<name>`` come on top, one per reward term the env names.

Conventions: ``train/*`` values are means over all minibatch updates of one iteration
(``update_epochs x num_minibatches`` of them); ``rollout/*`` values are over the iteration's
[T, B] rollout; ``env/*`` values are over the episodes that *completed* during the rollout
(weighted by ``done``) and are NaN when no episode completed (``env/num_episodes`` is then 0;
NaN rather than 0 so curves show a gap, not a fake zero).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

# --- train/: one optimisation step, averaged over the iteration's minibatch updates --------
APPROX_KL = "train/actor/approx_kl"
CLIP_FRACTION = "train/actor/clip_fraction"
CLIPPED_RATIO = "train/actor/clipped_ratio"
GRAD_NORM = "train/actor/grad_norm"
LR = "train/actor/lr"
POLICY_LOSS = "train/actor/policy_loss"
REF_KL = "train/actor/ref_kl"
VALUE_LOSS = "train/critic/value_loss"
VALUE_CLIP_RATIO = "train/critic/value_clip_ratio"
EXPLAINED_VARIANCE = "train/critic/explained_variance"
ENTROPY_LOSS = "train/entropy_loss"
LOSS = "train/loss"
# --- rollout/: the iteration's [T, B] transitions -------------------------------------------
ADVANTAGES_MAX = "rollout/advantages_max"
ADVANTAGES_MEAN = "rollout/advantages_mean"
ADVANTAGES_MIN = "rollout/advantages_min"
REWARDS = "rollout/rewards"
# --- rollout/ of GRPO: the groups' rounds that completed during the rollout ------------------
GROUP_RETURN_STD = "rollout/group_return_std"
ZERO_SPREAD_GROUPS = "rollout/zero_spread_groups"
VALID_FRACTION = "rollout/valid_fraction"
# --- env/: episodes that completed during the rollout ---------------------------------------
EPISODE_LEN = "env/episode_len"
RETURN = "env/return"
REWARD = "env/reward"
SUCCESS_ONCE = "env/success_once"
NUM_EPISODES = "env/num_episodes"
# --- eval/: Trainer.evaluate, one deterministic (mean-action) episode per eval env ----------
EVAL_SUCCESS_ONCE = "eval/success_once"
EVAL_RETURN = "eval/return"
EVAL_EPISODE_LEN = "eval/episode_len"
EVAL_NUM_EPISODES = "eval/num_episodes"  # python -m panda_rl.evaluate only
# --- time/: added by the run loop (panda_rl.runner), host wall-clock -------------------------
COMPILE_S = "time/compile_s"
ITERATION_S = "time/iteration_s"
ENV_STEPS_PER_S = "time/env_steps_per_s"
ENV_STEPS = "time/env_steps"
WALL_S = "time/wall_s"
EVAL_S = "time/eval_s"
VIDEO_S = "time/video_s"

DEFINITIONS: Dict[str, str] = {
    APPROX_KL: "mean(old_logp - new_logp) over the minibatch: the k1 estimate of "
               "KL(old || new) (nats).",
    CLIP_FRACTION: "share of samples with |ratio - 1| > clip_ratio, ratio = "
                   "exp(new_logp - old_logp): where the ratio clip is active.",
    CLIPPED_RATIO: "mean of clip(ratio, 1 - clip_ratio, 1 + clip_ratio).",
    GRAD_NORM: "global L2 norm of the gradient of train/loss over all parameters (policy and "
               "value), before gradient-norm clipping.",
    LR: "learning rate the optimiser applied at the update (from actor.optim.lr_schedule).",
    POLICY_LOSS: "mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))) with A the "
                 "(per-minibatch standardised, if enabled) advantages. GRPO: the mean is over "
                 "the minibatch's valid samples (rollout/valid_fraction), A the group "
                 "advantages.",
    REF_KL: "GRPO: mean over the minibatch's valid samples of the exact KL(pi(.|s) || "
            "pi_ref(.|s)) between the current policy's and the frozen reference policy's "
            "diagonal Gaussians (closed form, nats); pi_ref = the initial policy.",
    VALUE_LOSS: "0.5 * mean(max((V - R)^2, (V_clip - R)^2)), V_clip = V_old + clip(V - V_old, "
                "-value_clip, value_clip); 0.5 * mean((V - R)^2) when value_clip <= 0. "
                "R = GAE returns (advantages + V_old).",
    VALUE_CLIP_RATIO: "share of samples with |V - V_old| > value_clip: where value clipping "
                      "is active (0 when value_clip <= 0).",
    EXPLAINED_VARIANCE: "1 - Var(R - V) / Var(R) over the minibatch, V the current value "
                        "prediction (1 = perfect, 0 = as good as a constant, < 0 worse).",
    ENTROPY_LOSS: "mean entropy of the current policy's Gaussian (nats, summed over action "
                  "dims; GRPO: over valid samples); train/loss subtracts entropy_coef times it.",
    LOSS: "PPO: policy_loss + value_coef * value_loss - entropy_coef * entropy_loss. GRPO: "
          "policy_loss + kl_beta * ref_kl - entropy_coef * entropy_loss.",
    ADVANTAGES_MAX: "max of the raw (unstandardised) advantages over the rollout [T, B] "
                    "(GRPO: over the valid steps).",
    ADVANTAGES_MEAN: "mean of the raw (unstandardised) advantages over the rollout [T, B] "
                     "(GRPO: over the valid steps).",
    ADVANTAGES_MIN: "min of the raw (unstandardised) advantages over the rollout [T, B] "
                    "(GRPO: over the valid steps).",
    REWARDS: "mean env reward per step over the rollout [T, B] (before algorithm.reward_scale; "
             "GRPO: over the steps envs really took, not those spent waiting for the group).",
    GROUP_RETURN_STD: "GRPO: mean over the group rounds that completed in the rollout of the "
                      "standard deviation (ddof 0) of the G members' episode returns.",
    ZERO_SPREAD_GROUPS: "GRPO: share of the group rounds that completed in the rollout whose "
                        "G returns are all equal (max == min): their advantages are all 0.",
    VALID_FRACTION: "GRPO: share of the rollout's [T, B] steps that enter the loss: steps "
                    "envs really took (not waiting for their group) in episodes whose group "
                    "round completed within the rollout.",
    EPISODE_LEN: "mean length (env steps) of the episodes that completed in the rollout.",
    RETURN: "mean undiscounted return of the episodes that completed in the rollout.",
    REWARD: "mean over completed episodes of return / length: the per-step reward of an "
            "episode.",
    SUCCESS_ONCE: "share of completed episodes with metrics['success'] > 0 at any step.",
    NUM_EPISODES: "number of episodes that completed in the rollout (the weight of env/*).",
    EVAL_SUCCESS_ONCE: "share of evaluation episodes (mean action) that succeeded at any step.",
    EVAL_RETURN: "mean undiscounted return of the evaluation episodes.",
    EVAL_EPISODE_LEN: "mean length of the evaluation episodes.",
    EVAL_NUM_EPISODES: "number of evaluation episodes (python -m panda_rl.evaluate).",
    COMPILE_S: "first iteration only: seconds spent compiling the iteration program(s).",
    ITERATION_S: "wall seconds of the iteration (device work + host sync).",
    ENV_STEPS_PER_S: "env steps of the iteration / time/iteration_s (of one seed: with "
                     "runner.num_seeds = S the machine simulates S times as many).",
    ENV_STEPS: "total env steps so far, of one seed (x axis for success vs env steps).",
    WALL_S: "seconds since this process started training (setup and compile included).",
    EVAL_S: "wall seconds of an evaluation (the first one includes its compile).",
    VIDEO_S: "wall seconds of writing an evaluation's videos (the first: + compile).",
}

TRAIN_METRICS = (APPROX_KL, CLIP_FRACTION, CLIPPED_RATIO, GRAD_NORM, LR, POLICY_LOSS,
                 VALUE_LOSS, VALUE_CLIP_RATIO, EXPLAINED_VARIANCE, ENTROPY_LOSS, LOSS)
ROLLOUT_METRICS = (ADVANTAGES_MAX, ADVANTAGES_MEAN, ADVANTAGES_MIN, REWARDS)
ENV_METRICS = (EPISODE_LEN, RETURN, REWARD, SUCCESS_ONCE, NUM_EPISODES)
# Everything Trainer.train_iteration returns (PPO), in a stable order.
ITERATION_METRICS = TRAIN_METRICS + ROLLOUT_METRICS + ENV_METRICS
# GRPO: no critic metrics (absent, not zeros); the KL to the reference and group statistics.
GRPO_TRAIN_METRICS = (APPROX_KL, CLIP_FRACTION, CLIPPED_RATIO, GRAD_NORM, LR, POLICY_LOSS,
                      REF_KL, ENTROPY_LOSS, LOSS)
GROUP_METRICS = (GROUP_RETURN_STD, ZERO_SPREAD_GROUPS, VALID_FRACTION)
GRPO_ITERATION_METRICS = GRPO_TRAIN_METRICS + ROLLOUT_METRICS + GROUP_METRICS + ENV_METRICS
EVAL_METRICS = (EVAL_SUCCESS_ONCE, EVAL_RETURN, EVAL_EPISODE_LEN)
# Raw reward terms: env metric "reward_terms/<name>" -> "env/reward_terms/<name>", the term's
# mean over the rollout's [T, B] steps (unscaled; the env's reward_scales weight them).
REWARD_TERMS_PREFIX = "env/reward_terms/"


def reward_term_metrics(terms: Mapping[str, Array],
                        mask: Optional[Array] = None) -> Dict[str, Array]:
  """``env/reward_terms/<name>``: mean of each raw term over the steps (``mask`` 1)."""
  out = {}
  for key, value in terms.items():
    name = REWARD_TERMS_PREFIX + key.split("/", 1)[-1]
    out[name] = jnp.mean(value) if mask is None else weighted_mean(value, mask)
  return out


def explained_variance(returns: Array, values: Array) -> Array:
  """1 - Var(R - V) / Var(R) over all elements; NaN-free: 0 when Var(R) == 0.

  Args:
    returns: [...] value targets R.
    values: [...] value predictions V, same shape.
  """
  var_r = jnp.var(returns)
  ev = 1.0 - jnp.var(returns - values) / jnp.where(var_r > 0, var_r, 1.0)
  return jnp.where(var_r > 0, ev, 0.0)


def weighted_mean(x: Array, weight: Array) -> Array:
  """sum(x * w) / sum(w); NaN when sum(w) == 0 (no data, see the module docstring)."""
  total = jnp.sum(weight)
  return jnp.where(total > 0, jnp.sum(x * weight) / jnp.where(total > 0, total, 1.0),
                   jnp.nan)


def episode_metrics(done: Array, episode: Mapping[str, Array]) -> Dict[str, Array]:
  """``env/*`` from the episodes that completed in a rollout.

  Args:
    done: [T, B] 1.0 where a step ended its episode.
    episode: AutoResetWrapper's running totals, each [T, B]: ``episode_return``,
      ``episode_length``, ``episode_success_once`` (the finished episode's totals where
      ``done == 1``).
  """
  length = episode["episode_length"]
  ret = episode["episode_return"]
  per_step = ret / jnp.maximum(length, 1.0)
  return {
      EPISODE_LEN: weighted_mean(length, done),
      RETURN: weighted_mean(ret, done),
      REWARD: weighted_mean(per_step, done),
      SUCCESS_ONCE: weighted_mean((episode["episode_success_once"] > 0).astype(jnp.float32),
                                  done),
      NUM_EPISODES: jnp.sum(done),
  }


def rollout_metrics(rewards: Array, advantages: Array, reward_mask: Optional[Array] = None,
                    advantage_mask: Optional[Array] = None) -> Dict[str, Array]:
  """``rollout/*`` from the [T, B] env rewards and raw advantages.

  Args:
    reward_mask, advantage_mask: optional [T, B] 0/1 weights (GRPO: the steps envs really
      took, and the steps in the loss); None = every step. A mask with no 1 gives NaN.
  """
  if advantage_mask is None:
    adv_max, adv_mean, adv_min = jnp.max(advantages), jnp.mean(advantages), jnp.min(advantages)
  else:
    sel = advantage_mask > 0
    any_sel = jnp.any(sel)
    adv_max = jnp.where(any_sel, jnp.max(jnp.where(sel, advantages, -jnp.inf)), jnp.nan)
    adv_min = jnp.where(any_sel, jnp.min(jnp.where(sel, advantages, jnp.inf)), jnp.nan)
    adv_mean = weighted_mean(advantages, advantage_mask)
  return {
      ADVANTAGES_MAX: adv_max,
      ADVANTAGES_MEAN: adv_mean,
      ADVANTAGES_MIN: adv_min,
      REWARDS: jnp.mean(rewards) if reward_mask is None else weighted_mean(rewards, reward_mask),
  }
