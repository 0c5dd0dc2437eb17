"""PandaPickCubeVision-v0 and the CNN policy: observation contract, tokenizer, batched jitted
steps, the CNN encoder, the normaliser on dict observations, and a tiny PPO run whose
checkpoint ``load_policy`` turns back into actions. Images are 16 x 16 to stay fast."""

import panda_rl  # noqa: F401  (first: XLA flags)

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from panda_rl import networks
from panda_rl import normalizer as obs_norm
from panda_rl.config import load_config_file
from panda_rl.envs import language
from panda_rl.envs.pick_cube_vision import CAMERAS, DEFAULT_INSTRUCTION

ENV_ID = "PandaPickCubeVision-v0"
SIZE = 16
_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "configs", "mujoco_ppo_cnn.py")


@pytest.fixture(scope="module")
def vision_env():
  return panda_rl.make(ENV_ID, image_height=SIZE, image_width=SIZE)


def load_cnn_config():
  return load_config_file(_CONFIG_FILE)


def tiny_cnn_config():
  """configs/mujoco_ppo_cnn.py at 4 envs x 8 steps of 16 x 16 images, a tiny CNN, and
  8-step episodes: every rollout ends with all envs truncated (GAE bootstraps from the dict
  final_obs, AutoResetWrapper renders fresh reset observations)."""
  c = load_cnn_config()
  c.env.train.num_envs = 4
  c.env.train.overrides.image_height = SIZE
  c.env.train.overrides.image_width = SIZE
  c.env.train.overrides.episode_length = 8
  # Plain resets, so the proprioception can be compared with PandaPickCube's reset.
  c.env.train.overrides.reset_pregrasp_prob = 0.0
  c.env.eval.num_envs = 2
  c.rollout.num_steps = 8
  c.actor.model.policy_hidden = (16,)
  c.actor.model.value_hidden = (16,)
  c.actor.model.cnn_channels = (4, 8)
  c.actor.model.cnn_kernels = (3, 3)
  c.actor.model.cnn_strides = (2, 2)
  c.actor.model.cnn_features = 8
  c.actor.model.embed_dim = 4
  c.algorithm.update_epochs = 1
  c.algorithm.num_minibatches = 2
  c.runner.max_epochs = 2
  return c


@pytest.fixture(scope="module")
def trained():
  """A tiny PPO run on pixels (2 iterations = 64 batched, jitted, auto-resetting env steps).

  Compiling the MJX step dominates the cost of everything here, so the env tests below read
  the observations this run produced instead of compiling a step program of their own.
  Returns (trainer, initial state (host copy), final state, per-iteration metrics).
  """
  from panda_rl.training import Trainer

  trainer = Trainer(tiny_cnn_config())
  state = trainer.init(jax.random.PRNGKey(0))
  initial = jax.device_get(state)  # the state is donated to the iteration
  history = []
  for _ in range(2):
    state, metrics = trainer.train_iteration(state)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return trainer, initial, state, history


def cnn_model_config(**kw):
  c = ml_collections.ConfigDict(dict(
      policy_hidden=(16,), value_hidden=(16,), activation="tanh", init_log_std=-0.5,
      encoder="cnn", cnn_channels=(4, 8), cnn_kernels=(3, 3), cnn_strides=(2, 2),
      cnn_features=8, embed_dim=4))
  c.update(kw)
  return c


def fake_obs(lead=(), size=SIZE, seed=0):
  rng = np.random.default_rng(seed)
  obs = {cam: rng.integers(0, 256, lead + (size, size, 3)).astype(np.uint8) for cam in CAMERAS}
  obs.update(tcp_pos=rng.normal(size=lead + (3,)).astype(np.float32),
             tcp_vel=rng.normal(size=lead + (3,)).astype(np.float32),
             gripper_pos=rng.uniform(0, 0.08, lead + (1,)).astype(np.float32),
             instruction=np.broadcast_to(language.tokenize(DEFAULT_INSTRUCTION, 8),
                                         lead + (8,)).astype(np.int32))
  return jax.tree.map(jnp.asarray, obs)


# --------------------------------------------------------------------------------------
# Instruction tokens.


def test_tokenizer_round_trip():
  ids = language.tokenize("Pick up the cube.", 8)
  assert ids.dtype == np.int32 and ids.shape == (8,)
  assert list(ids[:5]) == [language.TOKEN_IDS[w] for w in ("pick", "up", "the", "cube", ".")]
  assert np.all(ids[5:] == language.PAD_ID)
  assert language.detokenize(ids) == "Pick up the cube."
  for text in ("Lift the red cube, and place it on the table.", "Grasp a block."):
    assert language.detokenize(language.tokenize(text, 16)) == text
  with pytest.raises(ValueError, match="not in the vocabulary"):
    language.tokenize("Pick up the sphere.", 8)
  with pytest.raises(ValueError, match="at most 3"):
    language.tokenize("Pick up the cube.", 3)
  loose = language.tokenize("Pick up the sphere.", 4, strict=False)
  assert list(loose) == [language.TOKEN_IDS[w] for w in ("pick", "up", "the")] + [
      language.UNK_ID]
  assert len(set(language.VOCAB)) == language.VOCAB_SIZE  # no duplicate words


# --------------------------------------------------------------------------------------
# The env.


def test_registered_and_config_keys(vision_env):
  assert ENV_ID in panda_rl.registered_envs()
  assert vision_env.instruction_text == DEFAULT_INSTRUCTION
  assert language.detokenize(vision_env.instruction_tokens) == DEFAULT_INSTRUCTION
  sizes = vision_env.observation_size
  assert sizes == {"front": (SIZE, SIZE, 3), "wrist": (SIZE, SIZE, 3), "tcp_pos": (3,),
                   "tcp_vel": (3,), "gripper_pos": (1,), "instruction": (8,)}
  assert vision_env.action_size == 4
  # PandaPickCube's keys pass through; unknown keys fail naming the valid ones.
  env = panda_rl.make(ENV_ID, episode_length=7, reward_type="sparse", image_height=8,
                      image_width=12, instruction="Lift the cube.")
  assert env.config.episode_length == 7 and env.config.reward_type == "sparse"
  assert env.renderer.height == 8 and env.renderer.width == 12
  assert language.detokenize(env.instruction_tokens) == "Lift the cube."
  with pytest.raises(ValueError, match=r"unknown config key.*image_size.*image_height"):
    panda_rl.make(ENV_ID, image_size=32)
  with pytest.raises(ValueError, match="image_height must be an int >= 1"):
    panda_rl.make(ENV_ID, image_height=0)
  with pytest.raises(ValueError, match="reward_type"):
    panda_rl.make(ENV_ID, reward_type="shaped")


@pytest.mark.parametrize("height, width", [(32, 32), (128, 128), (24, 40)])
def test_other_image_sizes_trace(height, width):
  env = panda_rl.make(ENV_ID, image_height=height, image_width=width)
  obs = jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs  # step renders the same way
  for cam in CAMERAS:
    assert obs[cam].shape == (height, width, 3) and obs[cam].dtype == jnp.uint8



def test_128x128_reset_and_step_really_run():
  """README: "128x128 and larger work". One jitted program (vmapped reset + one step, batch 2)
  traced, compiled and run at 128 x 128: real images, not just shapes."""
  env = panda_rl.make(ENV_ID, image_height=128, image_width=128)

  @jax.jit
  def reset_and_step(keys):
    state = jax.vmap(env.reset)(keys)
    action = jnp.tile(jnp.asarray([0.5, 0.0, -0.5, 1.0]), (2, 1))
    return state, jax.vmap(env.step)(state, action)

  first, second = jax.device_get(reset_and_step(jax.random.split(jax.random.PRNGKey(3), 2)))
  for state in (first, second):
    for cam in CAMERAS:
      img = state.obs[cam]
      assert img.shape == (2, 128, 128, 3) and img.dtype == np.uint8, cam
      assert img.std() > 5, cam  # a rendered picture
    assert np.all(np.isfinite(state.obs["tcp_pos"])) and np.all(np.isfinite(state.reward))
  assert np.all(second.metrics["nan_physics"] == 0)
  assert not np.array_equal(first.obs["front"][0], first.obs["front"][1])  # two cubes
  assert not np.array_equal(first.obs["wrist"], second.obs["wrist"])  # the arm moved

def check_obs(env, obs, batch):
  assert set(obs) == set(env.observation_size)
  for name, shape in env.observation_size.items():
    assert obs[name].shape == (batch,) + shape, name
  for cam in CAMERAS:
    assert obs[cam].dtype == np.uint8
    assert obs[cam].std() > 5, cam  # a picture, not a blank frame
  for name in ("tcp_pos", "tcp_vel", "gripper_pos"):
    assert obs[name].dtype == np.float32 and np.all(np.isfinite(obs[name])), name
  assert np.all((obs["gripper_pos"] >= -1e-3) & (obs["gripper_pos"] <= 0.081))
  assert obs["instruction"].dtype == np.int32
  assert np.all(obs["instruction"] == env.instruction_tokens[None])


def test_observation_contract_in_batched_jitted_steps(trained, pick_env):
  """Reset, steps (64 vmapped env steps inside the jitted iterations) and auto-reset."""
  from panda_rl.envs.base import AutoResetWrapper

  trainer, initial, final, _ = trained
  env = trainer.env.unwrapped
  start, end = initial.env_state, jax.device_get(final.env_state)
  check_obs(env, start.obs, 4)
  check_obs(env, end.obs, 4)  # fresh reset observations (all envs just truncated)
  check_obs(env, end.info["final_obs"], 4)  # what the last step reached
  assert np.all(end.done == 1) and np.all(end.truncated == 1)
  assert np.all(end.metrics["nan_physics"] == 0) and np.all(np.isfinite(end.reward))
  # Proprioception is PandaPickCube's observation: same reset from the same key.
  k_env = jax.random.split(jax.random.PRNGKey(0), 3)[0]  # Trainer's env key
  flat = AutoResetWrapper(pick_env, 4).reset(k_env).obs
  parts = pick_env.obs_dict(np.asarray(flat))
  for name in ("tcp_pos", "tcp_vel", "gripper_pos"):
    np.testing.assert_array_equal(start.obs[name], parts[name])
  # The arm moved: reached images and velocities differ from the reset ones.
  np.testing.assert_array_equal(end.obs["tcp_vel"], 0.0)
  assert np.abs(end.info["final_obs"]["tcp_vel"]).max() > 0
  for cam in CAMERAS:
    assert not np.array_equal(end.obs[cam], end.info["final_obs"][cam]), cam
  # Different cube placements, different pictures.
  assert not np.array_equal(start.obs["front"][0], start.obs["front"][1])
  assert not np.array_equal(start.obs["front"], end.obs["front"])


# --------------------------------------------------------------------------------------
# The CNN policy.


def test_cnn_networks_shapes_and_separate_encoders():
  nets = networks.make_networks(cnn_model_config(), action_size=4)
  encoder = networks.make_encoder(cnn_model_config())
  obs = fake_obs((2, 3))

  @jax.jit
  def run(key, obs):
    params = nets.init(key, jax.tree.map(lambda x: x[0, 0], obs))
    mean, log_std = nets.policy_apply(params["policy"], obs)
    one = nets.policy_apply(params["policy"], jax.tree.map(lambda x: x[1, 2], obs))[0]
    other = nets.policy_apply(params["policy"], dict(obs, front=255 - obs["front"]))[0]
    feats = encoder.apply({"params": params["policy"]["encoder"]}, obs)
    return params, mean, log_std, one, other, feats, nets.value_apply(params["value"], obs)

  params, mean, log_std, one, other, feats, value = run(jax.random.PRNGKey(0), obs)
  enc = params["policy"]["encoder"]
  assert set(enc) == {"cnn", "embed_instruction"}
  assert set(enc["cnn"]) == {"conv_0", "conv_1", "dense"}  # one conv stack for both views
  assert enc["embed_instruction"]["embedding"].shape == (language.VOCAB_SIZE, 4)
  assert "encoder" in params["value"]  # the value net has its own encoder
  assert mean.shape == (2, 3, 4) and log_std.shape == (2, 3, 4) and value.shape == (2, 3)
  assert np.all(np.isfinite(np.asarray(mean))) and np.all(np.isfinite(np.asarray(value)))
  # Features: 2 views x 8 + proprioception 7 + instruction embedding 4.
  assert feats.shape == (2, 3, 2 * 8 + 7 + 4)
  # An unbatched observation gives its row of the batch; the images matter.
  np.testing.assert_allclose(one, mean[1, 2], rtol=1e-5, atol=1e-6)
  assert not np.allclose(other, mean)


def test_cnn_encoder_errors_and_config_validation():
  nets = networks.make_networks(cnn_model_config(), action_size=4)
  with pytest.raises(ValueError, match="needs dict observations"):
    jax.eval_shape(nets.init, jax.random.PRNGKey(0), jnp.zeros(10))
  with pytest.raises(ValueError, match="Unknown encoder 'resnet'"):
    networks.make_networks(cnn_model_config(encoder="resnet"), action_size=4)
  # The default ("flat", or no encoder field at all) keeps the state-env behaviour.
  flat = networks.make_networks(cnn_model_config(encoder="flat"), action_size=4)
  assert flat.policy.encoder is None
  from panda_rl import validation

  c = load_cnn_config()
  c.actor.model.cnn_kernels = (3,) * (len(c.actor.model.cnn_channels) + 1)
  with pytest.raises(ValueError, match="same length"):
    validation.validate_config(c)
  c = load_cnn_config()
  del c.actor.model["shared_encoder"]  # (the typed ConfigDict field would refuse a str)
  c.actor.model.shared_encoder = "yes"
  with pytest.raises(ValueError, match="shared_encoder must be True or False"):
    validation.validate_config(c)
  c = load_cnn_config()
  c.actor.model.encoder = "vit"
  with pytest.raises(ValueError, match="actor.model.encoder must be one of"):
    validation.validate_config(c)


def test_normalizer_leaves_images_and_tokens_untouched():
  obs = fake_obs((5, 2))
  stats = obs_norm.init(jax.tree.map(lambda x: x[0, 0], obs))
  assert stats.mean["front"].shape == () and stats.mean["tcp_pos"].shape == (3,)
  stats = jax.jit(obs_norm.update)(stats, obs)
  assert float(stats.count) == 10
  np.testing.assert_allclose(stats.mean["tcp_pos"], np.asarray(obs["tcp_pos"]).reshape(
      10, 3).mean(0), rtol=1e-5, atol=1e-6)
  out = jax.jit(obs_norm.normalize)(stats, obs)
  for name in CAMERAS + ("instruction",):
    assert out[name].dtype == obs[name].dtype
    np.testing.assert_array_equal(out[name], obs[name])
  z = np.asarray(out["tcp_pos"]).reshape(10, 3)
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)




# --------------------------------------------------------------------------------------
# A tiny PPO run on pixels, its checkpoint, and load_policy.


def test_tiny_vision_ppo_run_and_load_policy(trained, tmp_path):
  from panda_rl import metrics as M
  from panda_rl.checkpoint import Checkpointer

  trainer, _, state, history = trained
  for h in history:
    assert set(M.ITERATION_METRICS) <= set(h)
    bad = {k: v for k, v in h.items() if not np.isfinite(v)}
    assert not bad, bad
  assert all(h[M.NUM_EPISODES] == 4 for h in history)  # every env truncated once per rollout
  # The config's shared encoder: the value net is a head on the policy's CNN features.
  assert trainer.networks.shared_encoder
  assert "encoder" not in state.params["value"] and "cnn" in state.params["policy"]["encoder"]
  # Only the float leaves have statistics.
  assert state.normalizer.mean["front"].shape == ()
  assert state.normalizer.mean["tcp_pos"].shape == (3,)
  assert float(state.normalizer.count) == 2 * 4 * 8
  assert int(state.env_steps) == 2 * 4 * 8

  with Checkpointer(tmp_path / "checkpoints") as ckpt:
    ckpt.save(2, state, trainer.config)
  policy = panda_rl.load_policy(tmp_path)
  assert policy.step == 2 and policy.action_size == 4
  assert policy.config.actor.model.encoder == "cnn"
  obs = jax.device_get(state.env_state.obs)
  action = np.asarray(policy(obs))
  assert action.shape == (4, 4) and action.dtype == np.float32
  assert np.all(np.abs(action) <= 1.0)
  assert np.asarray(policy(jax.tree.map(lambda x: x[0], obs))).shape == (4,)
  expected = jax.jit(trainer.policy_fn(state.params, state.normalizer))(obs)
  np.testing.assert_allclose(action, np.asarray(expected), rtol=1e-5, atol=1e-6)
