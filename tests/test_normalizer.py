"""Running observation statistics: chunked updates equal the plain mean / variance."""

import panda_rl  # noqa: F401  (sets XLA flags before jax starts)

import jax
import jax.numpy as jnp
import numpy as np

from panda_rl import normalizer as nz


def test_chunked_updates_equal_numpy_statistics():
  rng = np.random.default_rng(0)
  data = (rng.normal(size=(5, 7, 3)) * [1.0, 10.0, 0.1] + [3.0, -2.0, 50.0]).astype(np.float32)
  stats = nz.init(jnp.zeros(3))
  for t in range(5):  # five [7, 3] batches, as T rollout steps would arrive
    stats = nz.update(stats, jnp.asarray(data[t]))
  flat = data.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(np.asarray(stats.mean), flat.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stats.var), flat.var(0), rtol=1e-4)
  assert float(stats.count) == 35

  once = nz.update(nz.init(jnp.zeros(3)), jnp.asarray(data))  # one [T, B, 3] batch
  np.testing.assert_allclose(np.asarray(once.mean), np.asarray(stats.mean), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(once.var), np.asarray(stats.var), rtol=1e-4)


def test_unequal_batches_combine_exactly():
  a = jnp.asarray([[1.0], [2.0], [3.0]])
  b = jnp.asarray([[10.0]])
  s = nz.update(nz.update(nz.init(jnp.zeros(1)), a), b)
  ref = np.array([1.0, 2.0, 3.0, 10.0])
  np.testing.assert_allclose(float(s.mean[0]), ref.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(s.var[0]), ref.var(), rtol=1e-6)


def test_normalize_formula_clip_and_identity():
  stats = nz.RunningStats(mean=jnp.asarray([1.0, -2.0]), var=jnp.asarray([4.0, 0.25]),
                          count=jnp.asarray(10.0))
  out = nz.normalize(stats, jnp.asarray([[3.0, -2.5], [1.0, 100.0]]))
  np.testing.assert_allclose(np.asarray(out), [[1.0, -1.0], [0.0, 10.0]], rtol=1e-6)
  x = jnp.asarray([0.3, -7.0])
  np.testing.assert_allclose(np.asarray(nz.normalize(nz.init(x), x)), np.asarray(x), rtol=1e-6)


def test_dict_observations_leave_integer_leaves_alone():
  obs = {"image": jnp.zeros((4, 4, 3), jnp.uint8), "state": jnp.zeros(2)}
  stats = nz.init(obs)
  batch = {"image": jnp.full((6, 4, 4, 3), 200, jnp.uint8),
           "state": jnp.asarray(np.arange(12.0).reshape(6, 2), jnp.float32)}
  stats = nz.update(stats, batch)
  np.testing.assert_allclose(np.asarray(stats.mean["state"]), [5.0, 6.0])
  out = nz.normalize(stats, batch)
  assert out["image"].dtype == jnp.uint8 and int(out["image"][0, 0, 0, 0]) == 200
  np.testing.assert_allclose(np.asarray(out["state"]).mean(0), [0.0, 0.0], atol=1e-6)


def test_update_and_normalize_jit():
  stats = nz.init(jnp.zeros(2))
  stats = jax.jit(nz.update)(stats, jnp.ones((3, 2)))
  assert float(stats.count) == 3.0
  out = jax.jit(nz.normalize)(stats, jnp.ones((3, 2)))
  assert out.shape == (3, 2)
