"""Policy and value networks (flax linen) and the diagonal-Gaussian helpers PPO needs.

Each network is ``encoder -> MLP torso -> head``. The encoder turns an observation (a flat
float array, or a dict of arrays) into a feature vector [..., F]; :class:`FlatEncoder` is the
default for state observations, and :class:`CNNEncoder` (images + proprioception + instruction
tokens, ``actor.model.encoder = "cnn"``) plugs in through the ``encoder`` field without
touching the heads, the losses or the training loop.

All modules accept any leading batch shape: obs [..., obs_dim] -> mean [..., A].
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Dict[str, Any]

ACTIVATIONS: Dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "tanh": nn.tanh,
    "swish": nn.swish,
    "elu": nn.elu,
}

_LOG_2PI = math.log(2.0 * math.pi)


def activation_fn(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class FlatEncoder(nn.Module):
  """State observations -> features: obs [..., D] -> [..., D] float32.

  A dict of flat float vectors is concatenated in sorted-key order. Image entries (integer
  dtype) need a learned encoder: pass e.g. a CNN module as the network's ``encoder``.
  """

  @nn.compact
  def __call__(self, obs: Any) -> Array:
    if isinstance(obs, Mapping):
      parts = []
      for name in sorted(obs):
        x = obs[name]
        if not jnp.issubdtype(x.dtype, jnp.floating):
          raise NotImplementedError(
              f"FlatEncoder cannot encode observation {name!r} of dtype {x.dtype} (an image?); "
              "give the network an image encoder through its `encoder` field.")
        parts.append(x.astype(jnp.float32))
      return jnp.concatenate(parts, axis=-1)
    return jnp.asarray(obs, jnp.float32)


def _fold_batch(x: Array, event_ndim: int) -> tuple:
  """[..., *event] -> ([N, *event], leading shape); N = prod(leading) (1 when unbatched)."""
  lead = x.shape[:x.ndim - event_ndim]
  return x.reshape((-1,) + x.shape[x.ndim - event_ndim:]), lead


def im2col(x: Array, kernel: int, stride: int) -> Array:
  """SAME-padded patches: x [N, H, W, C] -> [N, ceil(H/s), ceil(W/s), k*k*C], each patch
  flattened in (row, column, channel) order, i.e. the layout of a [k, k, C, out] conv kernel.

  A convolution is then one matmul (:class:`PatchConv`). Padding follows XLA's SAME rule
  (total = max((out - 1) * s + k - in, 0), the smaller half before).
  """
  n, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  ph = max((ho - 1) * stride + kernel - h, 0)
  pw = max((wo - 1) * stride + kernel - w, 0)
  x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  if kernel == stride:  # non-overlapping patches: a reshape
    x = x[:, :ho * stride, :wo * stride]
    x = x.reshape(n, ho, stride, wo, stride, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, ho, wo, kernel * kernel * c)
  span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
  return jnp.concatenate([x[:, i:i + span_h:stride, j:j + span_w:stride]
                          for i in range(kernel) for j in range(kernel)], axis=-1)


class PatchConv(nn.Module):
  """A SAME-padded, strided 2-D convolution computed as :func:`im2col` + one matmul.

  Same function as ``nn.Conv(features, (k, k), strides=(s, s), padding="SAME")`` (its
  kernel is this one's reshaped to [k, k, C, features]), but it trains fast inside
  ``lax.scan`` on XLA:CPU: there, a convolution's *gradient* inside a loop body (PPO's
  minibatch scan) runs ~20x slower than the same gradient outside a loop (measured with
  jax 0.9.2 on the 2-core CPU: 8 steps of a 2-layer conv net on 2,048 image pairs took
  43 s in a scan vs 2.0 s as im2col matmuls). Matmuls have no such cliff, on CPU or GPU.
  """

  features: int
  kernel: int
  stride: int
  kernel_init: Callable[..., Array] = nn.initializers.orthogonal(math.sqrt(2.0))

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return nn.Dense(self.features, kernel_init=self.kernel_init, name="dense")(
        im2col(x, self.kernel, self.stride))


class ConvStack(nn.Module):
  """uint8 images [..., H, W, C] -> features [..., features]: pixels scaled to [0, 1], then
  ``len(channels)`` convolutions (SAME padding, so any image size works; computed as
  :class:`PatchConv`) and one Dense."""

  channels: Sequence[int] = (16, 32, 32)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  features: int = 128
  activation: str = "relu"

  @nn.compact
  def __call__(self, images: Array) -> Array:
    act = activation_fn(self.activation)
    x, lead = _fold_batch(images, 3)
    x = x.astype(jnp.float32) * (1.0 / 255.0)
    for i, (ch, k, st) in enumerate(zip(self.channels, self.kernels, self.strides)):
      x = act(PatchConv(int(ch), int(k), int(st), name=f"conv_{i}")(x))
    x = x.reshape((x.shape[0], -1))
    x = act(nn.Dense(int(self.features), kernel_init=nn.initializers.orthogonal(math.sqrt(2.0)),
                     name="dense")(x))
    return x.reshape(lead + (x.shape[-1],))


class CNNEncoder(nn.Module):
  """Dict observations with images -> one feature vector [..., F].

  Leaves are told apart by dtype (the convention of the vision envs, e.g.
  :mod:`panda_rl.envs.pick_cube_vision`):

  * uint8 [..., H, W, C]: camera images. ONE :class:`ConvStack` (shared weights) encodes
    every view; the per-view features are concatenated in sorted-key order, so the torso
    still knows which view is which.
  * other integers [..., L]: instruction token ids; ``nn.Embed`` then the mean over the
    non-padding (id != 0) tokens -> [..., embed_dim].
  * floats [..., D]: proprioception, concatenated as they are (the observation normaliser
    has already standardised them).

  F = num_views * cnn.features + sum(D) + embed_dim (per token leaf).
  """

  channels: Sequence[int] = (16, 32, 32)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  features: int = 128
  embed_dim: int = 16
  vocab_size: Optional[int] = None  # None -> panda_rl.envs.language.VOCAB_SIZE
  activation: str = "relu"

  @nn.compact
  def __call__(self, obs: Any) -> Array:
    if not isinstance(obs, Mapping):
      raise ValueError("CNNEncoder needs dict observations (images + proprioception), e.g. "
                       "PandaPickCubeVision-v0; for flat state observations use "
                       "actor.model.encoder='flat'")
    views = [k for k in sorted(obs) if obs[k].dtype == jnp.uint8]
    if not views:
      raise ValueError(f"CNNEncoder: no uint8 image in the observation (keys {sorted(obs)})")
    cnn = ConvStack(self.channels, self.kernels, self.strides, self.features,
                    self.activation, name="cnn")
    parts = [cnn(obs[k]) for k in views]
    for k in sorted(obs):
      x = obs[k]
      if k in views:
        continue
      if jnp.issubdtype(x.dtype, jnp.floating):
        parts.append(x.astype(jnp.float32))
      elif jnp.issubdtype(x.dtype, jnp.integer):
        parts.append(self._embed_tokens(k, x))
      else:
        raise ValueError(f"CNNEncoder: observation {k!r} has unsupported dtype {x.dtype}")
    return jnp.concatenate(parts, axis=-1)

  def _embed_tokens(self, name: str, ids: Array) -> Array:
    """ids [..., L] -> mean embedding of the non-padding tokens [..., embed_dim]."""
    vocab = self.vocab_size
    if vocab is None:
      from panda_rl.envs.language import VOCAB_SIZE

      vocab = VOCAB_SIZE
    emb = nn.Embed(int(vocab), int(self.embed_dim), name=f"embed_{name}")(ids)
    mask = (ids != 0).astype(jnp.float32)[..., None]
    return jnp.sum(emb * mask, axis=-2) / jnp.maximum(jnp.sum(mask, axis=-2), 1.0)


ENCODERS = ("flat", "cnn")
# actor.model fields that encoder="cnn" reads.
CNN_FIELDS = ("cnn_channels", "cnn_kernels", "cnn_strides", "cnn_features", "embed_dim")


def make_encoder(model_config: Any) -> Optional[nn.Module]:
  """The encoder ``model_config.encoder`` names (absent -> "flat"); None means the networks'
  default :class:`FlatEncoder`. Each call returns a fresh module (own parameters)."""
  kind = model_config.get("encoder", "flat")
  if kind not in ENCODERS:
    raise ValueError(f"Unknown encoder {kind!r}; valid: {list(ENCODERS)}")
  if kind == "flat":
    return None
  return CNNEncoder(channels=tuple(int(c) for c in model_config.cnn_channels),
                    kernels=tuple(int(k) for k in model_config.cnn_kernels),
                    strides=tuple(int(s) for s in model_config.cnn_strides),
                    features=int(model_config.cnn_features),
                    embed_dim=int(model_config.embed_dim))


class MLP(nn.Module):
  """Hidden layers only: x [..., F] -> [..., hidden[-1]] (x itself when hidden is empty)."""

  hidden: Sequence[int]
  activation: str = "swish"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    act = activation_fn(self.activation)
    for i, size in enumerate(self.hidden):
      # Orthogonal sqrt(2) init: the standard PPO choice, keeps activations O(1) at init.
      x = act(nn.Dense(size, kernel_init=nn.initializers.orthogonal(math.sqrt(2.0)),
                       name=f"dense_{i}")(x))
    return x


class GaussianPolicy(nn.Module):
  """obs -> (mean [..., A], log_std [..., A]); log_std is a learned, state-independent vector.

  No tanh squashing: the env clips actions to [-1, 1], and log-probabilities are those of the
  unclipped Gaussian sample (the standard PPO treatment).
  """

  action_size: int
  hidden: Sequence[int] = (256, 256)
  activation: str = "swish"
  init_log_std: float = -0.5
  # Upper bound on log_std (None: unbounded). Actions are clipped to [-1, 1], so beyond a std
  # of about 1 more noise no longer changes what the env receives (a[i] is then +-1 at
  # random) while the entropy bonus keeps paying for it, and the mean stops mattering.
  max_log_std: Optional[float] = None
  # tanh on the mean: it stays inside the action range [-1, 1], so exploration noise always
  # reaches the env (an unbounded mean can drift to e.g. -3, where nearly every sample of a
  # dimension clips to -1 and that dimension stops exploring).
  bounded_mean: bool = False
  # Per action dimension (a tuple of A entries, None = that dimension untouched):
  # mean_bound[i] = b > 0 makes the mean b * tanh(raw / b), inside [-b, b], so the noise
  # keeps reaching both sides of that dimension; min_log_std[i] is a floor under its log_std
  # (below it the entropy bonus and the loss have no gradient on the parameter).
  mean_bound: Optional[Tuple[Optional[float], ...]] = None
  min_log_std: Optional[Tuple[Optional[float], ...]] = None
  encoder: Optional[nn.Module] = None  # None -> FlatEncoder

  @nn.compact
  def __call__(self, obs: Any, return_features: bool = False):
    """-> (mean, log_std), or (mean, log_std, encoder features [..., F]) with
    ``return_features`` (what a value head sharing this encoder reads)."""
    encoder = self.encoder if self.encoder is not None else FlatEncoder(name="encoder")
    features = encoder(obs)
    x = MLP(self.hidden, self.activation, name="torso")(features)
    # Small output init: the initial mean is ~0 whatever the observation scale.
    mean = nn.Dense(self.action_size, kernel_init=nn.initializers.orthogonal(0.01),
                    name="mean")(x)
    if self.bounded_mean:
      mean = jnp.tanh(mean)
    if self.mean_bound is not None:
      bound = np.array([0.0 if b is None else b for b in self.mean_bound], np.float32)
      safe = np.where(bound > 0, bound, 1.0).astype(np.float32)
      mean = jnp.where(bound > 0, safe * jnp.tanh(mean / safe), mean)
    log_std = self.param("log_std", nn.initializers.constant(self.init_log_std),
                         (self.action_size,))
    if self.max_log_std is not None:
      log_std = jnp.minimum(log_std, self.max_log_std)
    if self.min_log_std is not None:
      floor = np.array([-np.inf if f is None else f for f in self.min_log_std], np.float32)
      log_std = jnp.maximum(log_std, floor)
    log_std = jnp.broadcast_to(log_std, mean.shape)
    if return_features:
      return mean, log_std, features
    return mean, log_std


class ValueNet(nn.Module):
  """obs -> V(obs) [...]."""

  hidden: Sequence[int] = (256, 256)
  activation: str = "swish"
  encoder: Optional[nn.Module] = None  # None -> FlatEncoder

  @nn.compact
  def __call__(self, obs: Any) -> Array:
    encoder = self.encoder if self.encoder is not None else FlatEncoder(name="encoder")
    x = MLP(self.hidden, self.activation, name="torso")(encoder(obs))
    v = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0), name="value")(x)
    return v[..., 0]


class ActorCritic(NamedTuple):
  """The modules of one agent and pure functions over their parameters.

  ``params`` is ``{"policy": ..., "value": ...}`` (no ``"value"`` when ``value`` is None,
  e.g. GRPO). The policy's parameters always hold its whole network, encoder included, so a
  policy alone (``params["policy"]``) acts.

  With ``shared_encoder`` the value net is a head on the *policy's* encoder features: one
  encoder (e.g. the CNN) serves both, its cost is paid once per forward/backward pass, and
  both losses train it; ``params["value"]`` then holds only the value torso and head. Use
  :meth:`forward` / :meth:`value_fn` (full ``params``), which work in both layouts;
  :meth:`value_apply` needs the separate layout.

  The losses use :func:`forward` (which falls back to ``policy_apply`` / ``value_apply``),
  so tests can pass any object with those two methods.
  """

  policy: GaussianPolicy
  value: Optional[ValueNet] = None
  shared_encoder: bool = False

  def init(self, key: Array, obs: Any) -> Params:
    """obs: one observation (or a batch); returns the parameter tree."""
    k_pi, k_v = jax.random.split(key)
    params = {"policy": self.policy.init(k_pi, obs)["params"]}
    if self.value is not None:
      value_in = obs
      if self.shared_encoder:
        value_in = self.policy.apply({"params": params["policy"]}, obs, return_features=True)[2]
      params["value"] = self.value.init(k_v, value_in)["params"]
    return params

  def policy_apply(self, policy_params: Any, obs: Any):
    """obs [..., D] -> (mean [..., A], log_std [..., A])."""
    return self.policy.apply({"params": policy_params}, obs)

  def value_apply(self, value_params: Any, obs: Any) -> Array:
    """obs [..., D] -> V [...] (separate-encoder layout only; see :meth:`value_fn`)."""
    if self.value is None:
      raise ValueError("this agent has no value network (algorithm.adv_type needs none)")
    if self.shared_encoder:
      raise ValueError("the value head shares the policy's encoder, so it needs the policy's "
                       "parameters too: use value_fn(params, obs) or forward(params, obs)")
    return self.value.apply({"params": value_params}, obs)

  def forward(self, params: Params, obs: Any) -> Tuple[Array, Array, Array]:
    """Full params -> (mean [..., A], log_std [..., A], V [...]); the encoder runs once
    when shared."""
    if not self.shared_encoder:
      mean, log_std = self.policy_apply(params["policy"], obs)
      return mean, log_std, self.value_apply(params["value"], obs)
    if self.value is None:
      raise ValueError("this agent has no value network (algorithm.adv_type needs none)")
    mean, log_std, features = self.policy.apply({"params": params["policy"]}, obs,
                                                return_features=True)
    return mean, log_std, self.value.apply({"params": params["value"]}, features)

  def value_fn(self, params: Params, obs: Any) -> Array:
    """Full params -> V(obs) [...] (either layout)."""
    if not self.shared_encoder:
      return self.value_apply(params["value"], obs)
    return self.forward(params, obs)[2]  # the unused policy head is dead code under jit


def forward(apply_fns: Any, params: Params, obs: Any) -> Tuple[Array, Array, Array]:
  """(mean, log_std, V) of ``obs`` through ``apply_fns.forward`` when it has one (e.g.
  :class:`ActorCritic`), else ``policy_apply`` + ``value_apply`` (a minimal test double)."""
  if hasattr(apply_fns, "forward"):
    return apply_fns.forward(params, obs)
  mean, log_std = apply_fns.policy_apply(params["policy"], obs)
  return mean, log_std, apply_fns.value_apply(params["value"], obs)


def _optional_float(value: Any) -> Optional[float]:
  return None if value is None else float(value)


def per_dim(model_config: Any, name: str, action_size: int
             ) -> Optional[Tuple[Optional[float], ...]]:
  """``model_config.<name>`` as a tuple of ``action_size`` floats or Nones; None when the key
  is absent, None or empty. A tuple of another length is a ValueError naming the key."""
  value = model_config.get(name)
  if value is None or len(tuple(value)) == 0:
    return None
  value = tuple(None if v is None else float(v) for v in value)
  if len(value) != int(action_size):
    raise ValueError(f"actor.model.{name}={value} has {len(value)} entries; the env's actions "
                     f"have {action_size} (one entry per dimension, None = untouched)")
  return value


def mean_bounds(model_config: Any, action_size: int) -> Optional[Tuple[Optional[float], ...]]:
  """:func:`per_dim` of ``mean_bound``, each bound > 0 (b * tanh(raw / b) needs it)."""
  value = per_dim(model_config, "mean_bound", action_size)
  if value is not None and any(v is not None and not v > 0 for v in value):
    raise ValueError(f"actor.model.mean_bound={value}: each bound must be > 0 (or None)")
  return value


def make_networks(model_config: Any, action_size: int, with_value: bool = True,
                  policy_encoder: Optional[nn.Module] = None,
                  value_encoder: Optional[nn.Module] = None) -> ActorCritic:
  """Builds the agent from ``config.actor.model`` (policy_hidden, value_hidden, activation,
  init_log_std, optional max_log_std and bounded_mean; optional ``encoder`` = "flat" |
  "cnn" with the cnn_* / embed_dim fields, see :func:`make_encoder`; optional
  ``shared_encoder``). Explicit encoders override the config's.
  By default the policy and the value net each get their own encoder (no shared parameters);
  with ``shared_encoder`` (or ``model_config.shared_encoder``) the value net is a head on the
  policy encoder's features (see :class:`ActorCritic`)."""
  activation_fn(model_config.activation)  # fail on a bad name before anything traces
  shared = bool(model_config.get("shared_encoder", False)) and with_value
  if policy_encoder is None:
    policy_encoder = make_encoder(model_config)
  if shared:
    if value_encoder is not None:
      raise ValueError("a value_encoder cannot be given with a shared encoder")
    # The value net's input is the policy encoder's feature vector (float): pass-through.
  elif value_encoder is None and with_value:
    value_encoder = make_encoder(model_config)
  policy = GaussianPolicy(action_size=int(action_size),
                          hidden=tuple(int(h) for h in model_config.policy_hidden),
                          activation=model_config.activation,
                          init_log_std=float(model_config.init_log_std),
                          max_log_std=_optional_float(model_config.get("max_log_std")),
                          bounded_mean=bool(model_config.get("bounded_mean", False)),
                          mean_bound=mean_bounds(model_config, action_size),
                          min_log_std=per_dim(model_config, "min_log_std", action_size),
                          encoder=policy_encoder)
  value = None
  if with_value:
    value = ValueNet(hidden=tuple(int(h) for h in model_config.value_hidden),
                     activation=model_config.activation, encoder=value_encoder)
  return ActorCritic(policy=policy, value=value, shared_encoder=shared)


# --- diagonal Gaussian --------------------------------------------------------------------

def gaussian_log_prob(mean: Array, log_std: Array, x: Array) -> Array:
  """log N(x; mean, exp(log_std)^2 I), summed over the last axis: [..., A] -> [...]."""
  z = (x - mean) * jnp.exp(-log_std)
  return jnp.sum(-0.5 * z * z - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std: Array) -> Array:
  """Entropy of N(., exp(log_std)^2 I), summed over the last axis: [..., A] -> [...]."""
  return jnp.sum(log_std + 0.5 * (_LOG_2PI + 1.0), axis=-1)


def gaussian_sample(key: Array, mean: Array, log_std: Array) -> Array:
  """One sample per mean: [..., A] -> [..., A]."""
  return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_kl(mean: Array, log_std: Array, other_mean: Array, other_log_std: Array) -> Array:
  """Exact KL(N(mean, std^2 I) || N(other_mean, other_std^2 I)), summed over the last axis.

  [..., A] -> [...]; per dimension: log(s_o / s) + (s^2 + (m - m_o)^2) / (2 s_o^2) - 1/2.
  """
  var_ratio = jnp.exp(2.0 * (log_std - other_log_std))
  diff = (mean - other_mean) * jnp.exp(-other_log_std)
  return jnp.sum(other_log_std - log_std + 0.5 * (var_ratio + diff * diff) - 0.5, axis=-1)
