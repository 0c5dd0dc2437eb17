"""Policy / value networks: shapes, initial values, pluggable encoders, Gaussian helpers."""

import panda_rl  # noqa: F401  (sets XLA flags before jax starts)

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from panda_rl import networks


def model_config(**kw):
  c = ml_collections.ConfigDict(dict(policy_hidden=(16, 16), value_hidden=(8,),
                                     activation="tanh", init_log_std=-0.5))
  c.update(kw)
  return c


def test_shapes_and_initial_distribution():
  nets = networks.make_networks(model_config(), action_size=4)
  params = jax.jit(nets.init)(jax.random.PRNGKey(0), jnp.zeros(10))
  obs = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 10))
  mean, log_std = jax.jit(nets.policy_apply)(params["policy"], obs)
  assert mean.shape == (3, 5, 4) and log_std.shape == (3, 5, 4)
  np.testing.assert_allclose(np.asarray(log_std), -0.5)
  assert float(jnp.max(jnp.abs(mean))) < 0.2  # small output init: mean starts near 0
  assert jax.eval_shape(nets.value_apply, params["value"], obs).shape == (3, 5)


def test_max_log_std_bounds_the_std_and_stops_the_entropy_gradient():
  """actor.model.max_log_std: log_std = min(parameter, bound), so past the bound the entropy
  bonus has no gradient left to push the parameter further; None leaves it unbounded."""
  obs = jnp.zeros((2, 10))
  free = networks.make_networks(model_config(), action_size=3)
  capped = networks.make_networks(model_config(max_log_std=0.0), action_size=3)
  policy = dict(free.init(jax.random.PRNGKey(0), obs[0])["policy"])
  policy["log_std"] = jnp.array([-1.0, -0.2, 0.7])
  _, log_std = free.policy_apply(policy, obs)
  np.testing.assert_allclose(log_std[0], [-1.0, -0.2, 0.7])
  _, log_std = capped.policy_apply(policy, obs)
  np.testing.assert_allclose(log_std[0], [-1.0, -0.2, 0.0])

  def entropy(p, nets):
    return jnp.mean(networks.gaussian_entropy(nets.policy_apply(p, obs)[1]))

  grad = jax.grad(entropy)(policy, capped)["log_std"]
  np.testing.assert_allclose(grad, [1.0, 1.0, 0.0])  # d entropy / d log_std_i = 1 below the cap
  grad = jax.grad(entropy)(policy, free)["log_std"]
  np.testing.assert_allclose(grad, [1.0, 1.0, 1.0])


def test_bounded_mean_is_the_tanh_of_the_unbounded_one():
  """actor.model.bounded_mean: the same parameters give tanh(mean), inside [-1, 1]; the
  log std is untouched."""
  obs = 50.0 * jax.random.normal(jax.random.PRNGKey(2), (64, 10))  # drive the mean far out
  free = networks.make_networks(model_config(), action_size=3)
  bounded = networks.make_networks(model_config(bounded_mean=True), action_size=3)
  policy = dict(free.init(jax.random.PRNGKey(0), obs[0])["policy"])
  policy["mean"] = jax.tree.map(lambda w: 300.0 * w, policy["mean"])
  mean, log_std = free.policy_apply(policy, obs)
  assert float(jnp.max(jnp.abs(mean))) > 1.5
  b_mean, b_log_std = bounded.policy_apply(policy, obs)
  np.testing.assert_allclose(b_mean, jnp.tanh(mean), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(b_log_std, log_std)
  assert float(jnp.max(jnp.abs(b_mean))) <= 1.0


def test_per_dimension_mean_bound_and_log_std_floor():
  """actor.model.mean_bound / min_log_std: per action dimension, None = untouched. A bound b
  gives b * tanh(raw / b) on that dimension only; a floor lifts that dimension's log std and
  stops its gradient below the floor."""
  obs = 50.0 * jax.random.normal(jax.random.PRNGKey(2), (64, 10))
  free = networks.make_networks(model_config(), action_size=3)
  banded = networks.make_networks(
      model_config(mean_bound=(None, None, 0.4), min_log_std=(None, 0.0, None)), action_size=3)
  policy = dict(free.init(jax.random.PRNGKey(0), obs[0])["policy"])
  policy["mean"] = jax.tree.map(lambda w: 300.0 * w, policy["mean"])
  policy["log_std"] = jnp.array([-1.0, -0.7, -0.3])
  mean, log_std = free.policy_apply(policy, obs)
  b_mean, b_log_std = banded.policy_apply(policy, obs)
  np.testing.assert_array_equal(b_mean[:, :2], mean[:, :2])
  np.testing.assert_allclose(b_mean[:, 2], 0.4 * jnp.tanh(mean[:, 2] / 0.4), rtol=1e-6,
                             atol=1e-7)
  assert float(jnp.max(jnp.abs(mean[:, 2]))) > 1.0
  assert float(jnp.max(jnp.abs(b_mean[:, 2]))) <= np.float32(0.4)
  np.testing.assert_allclose(b_log_std[0], [-1.0, 0.0, -0.3])

  def entropy(p):
    return jnp.mean(networks.gaussian_entropy(banded.policy_apply(p, obs)[1]))

  np.testing.assert_allclose(jax.grad(entropy)(policy)["log_std"], [1.0, 0.0, 1.0])


def test_per_dimension_settings_must_fit_the_actions():
  with pytest.raises(ValueError, match=r"mean_bound=.*3 entries.*actions have 4"):
    networks.make_networks(model_config(mean_bound=(None, None, 0.4)), action_size=4)
  with pytest.raises(ValueError, match=r"min_log_std=.*1 entries.*actions have 2"):
    networks.make_networks(model_config(min_log_std=(0.0,)), action_size=2)
  with pytest.raises(ValueError, match="each bound must be > 0"):
    networks.make_networks(model_config(mean_bound=(0.0, None)), action_size=2)
  assert networks.make_networks(model_config(mean_bound=(), min_log_std=None),
                                action_size=2).policy.mean_bound is None


def test_no_value_net_when_not_needed():
  nets = networks.make_networks(model_config(), action_size=2, with_value=False)
  params = jax.eval_shape(nets.init, jax.random.PRNGKey(0), jnp.zeros(3))
  assert set(params) == {"policy"}
  with pytest.raises(ValueError, match="no value network"):
    nets.value_apply(None, jnp.zeros(3))


class TinyImageEncoder(nn.Module):
  """Stand-in for the vision issue's CNN: dict(image uint8, state) -> features."""

  @nn.compact
  def __call__(self, obs):
    img = obs["image"].astype(jnp.float32) / 255.0
    img = nn.Conv(4, (3, 3), strides=2)(img)
    feats = img.reshape(img.shape[:-3] + (-1,))
    return jnp.concatenate([feats, obs["state"]], axis=-1)


def test_an_image_encoder_plugs_in_front():
  obs = {"image": jnp.zeros((8, 8, 3), jnp.uint8), "state": jnp.zeros(7)}
  nets = networks.make_networks(model_config(), action_size=4,
                                policy_encoder=TinyImageEncoder(),
                                value_encoder=TinyImageEncoder())
  params = jax.eval_shape(nets.init, jax.random.PRNGKey(0), obs)
  batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (2,) + x.shape), obs)
  mean, _ = jax.eval_shape(nets.policy_apply, params["policy"], batch)
  assert mean.shape == (2, 4)
  assert jax.eval_shape(nets.value_apply, params["value"], batch).shape == (2,)
  # Without an image encoder, the default one refuses images clearly.
  plain = networks.make_networks(model_config(), action_size=4)
  with pytest.raises(NotImplementedError, match="image"):
    jax.eval_shape(plain.init, jax.random.PRNGKey(0), obs)


def test_shared_encoder_layout_forward_and_gradients():
  """shared_encoder: one encoder (in the policy's params) feeds both heads; the value loss
  trains it; forward == the policy's own output + the value head on its features."""
  obs = {"image": jnp.arange(8 * 8 * 3, dtype=jnp.uint8).reshape(8, 8, 3), "state": jnp.ones(7)}
  batch = jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), obs)
  nets = networks.make_networks(model_config(shared_encoder=True), action_size=4,
                                policy_encoder=TinyImageEncoder())
  assert nets.shared_encoder
  params = nets.init(jax.random.PRNGKey(0), obs)
  assert "encoder" in params["policy"] and "encoder" not in params["value"]
  feat_dim = params["policy"]["torso"]["dense_0"]["kernel"].shape[0]  # 4*4*4 conv + 7 state
  assert feat_dim == 71
  assert params["value"]["torso"]["dense_0"]["kernel"].shape == (feat_dim, 8)

  mean, log_std, value = nets.forward(params, batch)
  mean_p, log_std_p = nets.policy_apply(params["policy"], batch)
  np.testing.assert_allclose(np.asarray(mean), np.asarray(mean_p), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(log_std), np.asarray(log_std_p))
  feats = TinyImageEncoder().apply({"params": params["policy"]["encoder"]}, batch)
  head = nets.value.apply({"params": params["value"]}, feats)
  assert value.shape == (2,)
  np.testing.assert_allclose(np.asarray(value), np.asarray(head), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(nets.value_fn(params, batch)), np.asarray(value),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="shares the policy's encoder"):
    nets.value_apply(params["value"], batch)

  # A value-only loss moves the shared encoder (and not the policy's own head).
  grads = jax.grad(lambda p: jnp.sum(nets.value_fn(p, batch) ** 2))(params)
  enc_norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads["policy"]["encoder"]))
  assert enc_norm > 0.0
  assert float(jnp.sum(jnp.abs(grads["policy"]["mean"]["kernel"]))) == 0.0

  # GRPO-style agents (no value net) ignore the flag; a separate layout keeps two encoders.
  assert not networks.make_networks(model_config(shared_encoder=True), 4,
                                    with_value=False).shared_encoder
  sep = networks.make_networks(model_config(), 4, policy_encoder=TinyImageEncoder(),
                               value_encoder=TinyImageEncoder())
  sep_params = sep.init(jax.random.PRNGKey(0), obs)
  assert "encoder" in sep_params["value"]
  m, s, v = networks.forward(sep, sep_params, batch)
  np.testing.assert_allclose(np.asarray(v),
                             np.asarray(sep.value_apply(sep_params["value"], batch)), rtol=1e-6)


def test_dict_of_flat_vectors_is_concatenated():
  nets = networks.make_networks(model_config(), action_size=2)
  obs = {"a": jnp.ones(3), "b": jnp.zeros(2)}
  params = jax.eval_shape(nets.init, jax.random.PRNGKey(0), obs)
  kernel = params["policy"]["torso"]["dense_0"]["kernel"]
  assert kernel.shape == (5, 16)


def test_gaussian_helpers_match_formulas():
  mean = jnp.asarray([[0.5, -1.0]])
  log_std = jnp.asarray([[-0.5, 0.3]])
  x = jnp.asarray([[0.7, 0.0]])
  std = np.exp([-0.5, 0.3])
  ref = np.sum(-0.5 * ((np.array([0.7, 0.0]) - [0.5, -1.0]) / std) ** 2 - np.log(std)
               - 0.5 * np.log(2 * np.pi))
  np.testing.assert_allclose(float(networks.gaussian_log_prob(mean, log_std, x)[0]), ref,
                             rtol=1e-6)
  ref_h = np.sum(0.5 * np.log(2 * np.pi * np.e * std ** 2))
  np.testing.assert_allclose(float(networks.gaussian_entropy(log_std)[0]), ref_h, rtol=1e-6)
  samples = jax.jit(networks.gaussian_sample)(jax.random.PRNGKey(0), jnp.zeros((20000, 2)),
                                              jnp.broadcast_to(log_std, (20000, 2)))
  np.testing.assert_allclose(np.asarray(samples.std(0)), std, rtol=0.03)


def test_bad_activation_fails_clearly():
  with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
    networks.make_networks(model_config(activation="gelu"), action_size=2)


@pytest.mark.parametrize("hw,kernel,stride", [((9, 8), 3, 2), ((8, 8), 4, 4), ((7, 10), 5, 2),
                                              ((6, 6), 4, 2), ((5, 5), 3, 1)])
def test_patch_conv_equals_xla_same_conv(hw, kernel, stride):
  """im2col + matmul == lax's SAME-padded strided convolution with the reshaped kernel."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2,) + hw + (3,))
  conv = networks.PatchConv(5, kernel, stride)
  params = conv.init(jax.random.PRNGKey(1), x)
  w = params["params"]["dense"]["kernel"].reshape(kernel, kernel, 3, 5)
  b = params["params"]["dense"]["bias"]
  expected = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
  got = conv.apply(params, x)
  assert got.shape == expected.shape == (2, -(-hw[0] // stride), -(-hw[1] // stride), 5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
