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
