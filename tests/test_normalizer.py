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


def _numpy_stats(batches):
  """Mean and population variance of every row of every batch, in float64."""
  flat = np.concatenate([b.reshape(-1, b.shape[-1]) for b in batches]).astype(np.float64)
  return flat.mean(0), flat.var(0), len(flat)


def test_values_over_several_updates_match_numpy():
  """Mean, variance and normalised values after each of several unequal updates."""
  rng = np.random.default_rng(1)
  scale, shift = np.array([0.5, 20.0, 1e-2, 3.0]), np.array([-4.0, 100.0, 0.3, 0.0])
  shapes = [(6, 4), (1, 4), (3, 5, 4), (17, 4)]  # [B, D], one row, [T, B, D], [B, D]
  batches = [(rng.normal(size=s) * scale + shift).astype(np.float32) for s in shapes]
  stats = nz.init(jnp.zeros(4))
  update = jax.jit(nz.update)
  for i, batch in enumerate(batches):
    stats = update(stats, jnp.asarray(batch))
    mean, var, count = _numpy_stats(batches[:i + 1])
    assert float(stats.count) == count
    # float32 against float64: the error of a mean is relative to its spread and offset
    np.testing.assert_allclose((np.asarray(stats.mean) - mean) / scale, 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.var), var, rtol=1e-4)
    z = np.asarray(nz.normalize(stats, jnp.asarray(batch)))
    want = np.clip((batch - mean) / np.sqrt(var + 1e-8), -10.0, 10.0)
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-4)


def test_dict_observation_values_and_uint8_leaves_untouched():
  """Dict observations (vision): float leaves get numpy's statistics, uint8 images keep a
  placeholder statistic and come out of normalize bit for bit."""
  rng = np.random.default_rng(2)
  one = {"front": jnp.zeros((5, 6, 3), jnp.uint8), "tcp_pos": jnp.zeros(3),
         "extra": {"gripper": jnp.zeros(1), "instruction": jnp.zeros(4, jnp.int32)}}
  stats = nz.init(one)
  floats = {"tcp_pos": [], "gripper": []}
  for b in (4, 9, 2):
    batch = {"front": jnp.asarray(rng.integers(0, 256, (b, 5, 6, 3)), jnp.uint8),
             "tcp_pos": jnp.asarray(rng.normal(size=(b, 3)) * 0.2 + [0.4, 0.0, 0.1],
                                    jnp.float32),
             "extra": {"gripper": jnp.asarray(rng.uniform(0, 0.08, (b, 1)), jnp.float32),
                       "instruction": jnp.asarray(rng.integers(0, 50, (b, 4)), jnp.int32)}}
    stats = jax.jit(nz.update)(stats, batch)
    floats["tcp_pos"].append(np.asarray(batch["tcp_pos"]))
    floats["gripper"].append(np.asarray(batch["extra"]["gripper"]))
    assert float(stats.count) == sum(len(x) for x in floats["tcp_pos"])
    for name, got_mean, got_var in [
        ("tcp_pos", stats.mean["tcp_pos"], stats.var["tcp_pos"]),
        ("gripper", stats.mean["extra"]["gripper"], stats.var["extra"]["gripper"])]:
      mean, var, _ = _numpy_stats(floats[name])
      np.testing.assert_allclose(np.asarray(got_mean), mean, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(np.asarray(got_var), var, rtol=1e-4, atol=1e-9)
    # Integer leaves: placeholder statistics, never updated.
    for leaf in (stats.mean["front"], stats.mean["extra"]["instruction"]):
      assert leaf.shape == () and float(leaf) == 0.0
    for leaf in (stats.var["front"], stats.var["extra"]["instruction"]):
      assert leaf.shape == () and float(leaf) == 1.0
    out = jax.jit(nz.normalize)(stats, batch)
    for key in ("front",):
      assert out[key].dtype == jnp.uint8
      np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(batch[key]))
    assert out["extra"]["instruction"].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out["extra"]["instruction"]),
                                  np.asarray(batch["extra"]["instruction"]))
    mean, var, _ = _numpy_stats(floats["tcp_pos"])
    np.testing.assert_allclose(np.asarray(out["tcp_pos"]),
                               (np.asarray(batch["tcp_pos"]) - mean) / np.sqrt(var + 1e-8),
                               rtol=1e-4, atol=1e-4)
