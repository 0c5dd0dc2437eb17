"""PandaPickCube-v0: interface, shapes, determinism, reset ranges, reward, flags, auto-reset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import panda_rl
from panda_rl.envs.base import AutoResetWrapper
from panda_rl.envs.pick_cube import PandaPickCube

B = 4


def _keys(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


# ----------------------------------------------------------------- errors at the edge
def test_unknown_env_name_is_clear():
  with pytest.raises(ValueError, match=r"Unknown env 'PandaPickCub-v0'.*PandaPickCube-v0"):
    panda_rl.make("PandaPickCub-v0")


def test_script_overrides_parse_json_values_and_keep_strings():
  from panda_rl.envs.registry import parse_overrides

  assert parse_overrides(["sim_dt=0.01", "solver_iterations=4", "target_mode=tcp",
                          "cube_xy_low=[0.3, -0.2]", "reward_type=dense"]) == {
      "sim_dt": 0.01, "solver_iterations": 4, "target_mode": "tcp",
      "cube_xy_low": [0.3, -0.2], "reward_type": "dense"}
  for bad in ("sim_dt", "=0.01"):
    with pytest.raises(ValueError, match="expected key=value"):
      parse_overrides([bad])


def test_unknown_override_is_clear():
  with pytest.raises(ValueError, match=r"unknown config key\(s\) \['episode_len'\]"):
    panda_rl.make("PandaPickCube-v0", episode_len=10)
  with pytest.raises(ValueError, match="reward_type"):
    panda_rl.make("PandaPickCube-v0", reward_type="shaped")


def test_wrong_action_shape_fails_before_compiling(pick_env):
  state = pick_env.reset(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"action must have shape \[\.\.\., 4\].*\(3,\)"):
    pick_env.step(state, jnp.zeros(3))
  wrapped = AutoResetWrapper(pick_env, 2)
  with pytest.raises(ValueError, match=r"got shape \(2, 5\)"):
    wrapped.step(wrapped.reset(jax.random.PRNGKey(0)), jnp.zeros((2, 5)))


# ----------------------------------------------------------------- shapes, NaN, determinism
def _random_rollout(reset, step, keys, steps, seed):
  state = reset(keys)
  obs, rew = [state.obs], []
  key = jax.random.PRNGKey(seed)
  for _ in range(steps):
    key, sub = jax.random.split(key)
    state = step(state, jax.random.uniform(sub, (keys.shape[0], 4), minval=-1, maxval=1))
    obs.append(state.obs)
    rew.append(state.reward)
  return state, np.stack(obs), np.stack(rew)


def test_shapes_dtypes_and_no_nan(pick_env, pick_fns):
  reset, step = pick_fns
  assert pick_env.observation_size == 10 and pick_env.action_size == 4
  state, obs, rew = _random_rollout(reset, step, _keys(B), 15, seed=1)
  assert obs.shape == (16, B, 10) and obs.dtype == np.float32
  assert state.reward.shape == (B,) and state.done.shape == (B,)
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64))), "NaN/inf in state"
  assert np.all(np.isfinite(obs)) and np.all(np.isfinite(rew))
  parts = PandaPickCube.obs_dict(obs)
  assert parts["tcp_pos"].shape == (16, B, 3) and parts["gripper_pos"].shape == (16, B, 1)
  assert np.all((parts["gripper_pos"] > -1e-3) & (parts["gripper_pos"] < 0.081))


def test_same_key_same_trajectory(pick_fns):
  reset, step = pick_fns
  _, obs1, rew1 = _random_rollout(reset, step, _keys(B, 3), 5, seed=7)
  _, obs2, rew2 = _random_rollout(reset, step, _keys(B, 3), 5, seed=7)
  np.testing.assert_array_equal(obs1, obs2)
  np.testing.assert_array_equal(rew1, rew2)
  _, obs3, _ = _random_rollout(reset, step, _keys(B, 4), 5, seed=7)
  assert not np.allclose(obs1[0], obs3[0])


def test_reset_ranges(pick_env, pick_fns):
  reset, _ = pick_fns
  state = jax.jit(jax.vmap(pick_env.reset))(_keys(2048, 5))
  cube = np.asarray(PandaPickCube.obs_dict(state.obs)["cube_pos"])
  cfg = pick_env.config
  assert np.all(cube[:, :2] >= np.array(cfg.cube_xy_low)) and np.all(
      cube[:, :2] <= np.array(cfg.cube_xy_high))
  np.testing.assert_allclose(cube[:, 2], 0.02, atol=1e-6)  # resting on the floor
  # The draws cover the range (not stuck in a corner).
  assert cube[:, 0].min() < 0.27 and cube[:, 0].max() > 0.53
  assert cube[:, 1].min() < -0.23 and cube[:, 1].max() > 0.23
  obs = PandaPickCube.obs_dict(state.obs)
  np.testing.assert_allclose(obs["gripper_pos"], 0.08, atol=1e-6)  # open
  np.testing.assert_allclose(obs["tcp_pos"][0], [0.3076, 0.0, 0.4896], atol=1e-3)
  np.testing.assert_allclose(state.info["target"], obs["tcp_pos"], atol=1e-6)
  assert np.all(np.asarray(state.done) == 0) and np.all(np.asarray(state.info["step"]) == 0)


# ----------------------------------------------------------------- reward and success
def _constructed(env, tcp, cube):
  data = env.reset(jax.random.PRNGKey(0)).data
  c = env._cube_qpos
  return data.replace(site_xpos=data.site_xpos.at[env._tcp].set(jnp.asarray(tcp)),
                      qpos=data.qpos.at[c:c + 3].set(jnp.asarray(cube)))


@pytest.mark.parametrize("tcp,cube,reach,lift,success", [
    # 10 cm apart, on the floor: reach = exp(-20 * 0.1), no lift.
    ((0.4, 0.0, 0.12), (0.4, 0.0, 0.02), np.exp(-2.0), 0.0, 0.0),
    # cube in the hand, lifted 0.12 m: lift = 0.12 / 0.2, success.
    ((0.4, 0.1, 0.14), (0.4, 0.1, 0.14), 1.0, 0.6, 1.0),
    # lifted 0.3 m (lift saturates) but 6 cm from the TCP: no success (radius 5 cm).
    ((0.4, 0.0, 0.38), (0.4, 0.06, 0.32), np.exp(-20 * np.sqrt(0.06**2 + 0.06**2)), 1.0, 0.0),
    # in the hand, lifted only 9 cm: no success (needs 10 cm).
    ((0.3, 0.0, 0.11), (0.3, 0.0, 0.11), 1.0, 0.45, 0.0),
])
def test_reward_terms_match_hand_computed(pick_env, tcp, cube, reach, lift, success):
  data = _constructed(pick_env, tcp, cube)
  terms, succ = pick_env.reward_terms(data, jnp.asarray(cube), 0.02)
  assert set(terms) == {"reach", "lift"}
  np.testing.assert_allclose(terms["reach"], reach, rtol=1e-5)
  np.testing.assert_allclose(terms["lift"], lift, rtol=1e-5, atol=1e-6)
  assert float(succ) == success
  shaped, metrics = pick_env._reward(data, jnp.asarray(cube), 0.02)
  np.testing.assert_allclose(shaped, 0.3 * reach + 0.7 * lift, rtol=1e-5)
  assert set(metrics) == {"reward_terms/reach", "reward_terms/lift", "success"}


# Rollouts that call `step`, one env per reward type with the same key and actions (so the
# same trajectory: the reward type does not touch the physics). Half the resets start with
# the cube in the closed hand (lifted 0.47 m above its start: lift and success are 1), the
# others on the floor, so every term and both success values occur.
REWARD_STEPS = 4
REWARD_B = 4
_REWARD_ACTIONS = np.array([[0.4, -0.3, 0.2, 1.0], [-0.5, 0.2, -0.4, 1.0],
                            [0.1, 0.5, -0.6, 1.0], [-0.2, -0.4, 0.5, 1.0]], np.float32)
_rollouts = {}


def _reward_rollout(kind):
  """(env, [reset state, state after step 1, ...]) for reward_type ``kind`` (cached)."""
  if kind not in _rollouts:
    env = panda_rl.make("PandaPickCube-v0", reward_type=kind, reset_in_hand_prob=0.5)
    state = jax.jit(jax.vmap(env.reset))(_keys(REWARD_B, 2))
    step = jax.jit(jax.vmap(env.step))
    states = [state]
    for t in range(REWARD_STEPS):
      action = np.roll(_REWARD_ACTIONS, t, axis=0)  # a different action per env and step
      states.append(step(states[-1], jnp.asarray(action)))
    _rollouts[kind] = env, [jax.tree.map(np.asarray, s) for s in states]
  return _rollouts[kind]


@pytest.fixture(scope="module", autouse=True)
def _drop_rollouts():
  yield
  _rollouts.clear()


def _independent(env, state):
  """(dense reward, success) per env [B], from the state only: TCP from the observation,
  cube from qpos, start height from info; TASK.md's formula with its literal constants."""
  tcp = state.obs[:, 0:3].astype(np.float64)
  c = env._cube_qpos
  cube = state.data.qpos[:, c:c + 3].astype(np.float64)
  d = np.linalg.norm(cube - tcp, axis=-1)
  height = cube[:, 2] - state.info["z_init"]
  dense = 0.3 * np.exp(-20.0 * d) + 0.7 * np.clip(height / 0.2, 0.0, 1.0)
  success = ((height >= 0.1) & (d <= 0.05)).astype(np.float64)
  return dense, success


def test_step_dense_reward_matches_the_formula():
  env, states = _reward_rollout("dense")
  held = states[0].info["grip_cmd"] == 1.0
  assert held.any() and (~held).any(), "the seed must give both kinds of reset"
  for s in states[1:]:
    dense, _ = _independent(env, s)
    np.testing.assert_allclose(s.reward, dense, rtol=1e-5, atol=1e-6)
  lifts = np.stack([s.metrics["reward_terms/lift"] for s in states[1:]])
  assert np.all(lifts[:, held] == 1.0) and np.all(lifts[:, ~held] < 0.05)


def test_step_reward_terms_times_scales_sum_to_the_dense_reward():
  env, states = _reward_rollout("dense")
  assert env.reward_scales == {"reach": 0.3, "lift": 0.7}
  for s in states:
    terms = {k[len("reward_terms/"):]: v for k, v in s.metrics.items()
             if k.startswith("reward_terms/")}
    assert set(terms) == {"reach", "lift"} and "reach" not in s.metrics
    dense, success = _independent(env, s)
    np.testing.assert_allclose(terms["reach"], np.exp(-20.0 * np.linalg.norm(
        s.data.qpos[:, env._cube_qpos:env._cube_qpos + 3] - s.obs[:, :3], axis=-1)),
        rtol=1e-5)
    total = sum(env.reward_scales[n] * terms[n] for n in ("reach", "lift"))
    np.testing.assert_allclose(total, dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s.metrics["success"], success)
    assert set(s.metrics) >= {"success", "nan_physics", "out_of_bounds"}
  for s in states[1:]:  # the returned reward is exactly that sum
    total = env.reward_scales["reach"] * s.metrics["reward_terms/reach"]
    total = total + env.reward_scales["lift"] * s.metrics["reward_terms/lift"]
    np.testing.assert_allclose(s.reward, total, rtol=1e-6)


def test_step_relative_reward_is_the_change_of_the_dense_reward():
  env, states = _reward_rollout("relative")
  dense = [_independent(env, s)[0] for s in states]
  assert np.all(states[0].reward == 0.0)
  for t in range(1, len(states)):
    np.testing.assert_allclose(states[t].reward, dense[t] - dense[t - 1], atol=1e-5)
  # Telescoping: the episode's relative rewards add up to final minus initial dense reward.
  total = np.sum([s.reward for s in states[1:]], axis=0)
  np.testing.assert_allclose(total, dense[-1] - dense[0], atol=1e-5)
  assert np.any(np.abs(total) > 1e-3)  # the arm moved: not a trivially zero check


def test_step_sparse_reward_is_the_success_indicator():
  env, states = _reward_rollout("sparse")
  seen = set()
  for s in states[1:]:
    _, success = _independent(env, s)
    np.testing.assert_array_equal(s.reward, success)
    seen.update(success.tolist())
  assert seen == {0.0, 1.0}


def test_reward_types_share_the_trajectory():
  """Same key and actions: the reward type changes the reward only, not the physics."""
  _, dense = _reward_rollout("dense")
  for kind in ("relative", "sparse"):
    _, other = _reward_rollout(kind)
    for a, b in zip(dense, other):
      np.testing.assert_array_equal(a.obs, b.obs)
      np.testing.assert_array_equal(a.data.qpos, b.data.qpos)


# ----------------------------------------------------------------- episode flags
def test_truncation_at_time_limit(pick_env, pick_fns):
  reset, step = pick_fns
  state = reset(_keys(2, 9))
  zero = jnp.zeros((2, 4))
  for t in range(1, pick_env.config.episode_length + 1):
    state = step(state, zero)
    if t < pick_env.config.episode_length:
      assert not np.any(np.asarray(state.done)), f"done too early at step {t}"
  np.testing.assert_array_equal(state.truncated, [1, 1])
  np.testing.assert_array_equal(state.terminated, [0, 0])
  np.testing.assert_array_equal(state.done, [1, 1])


def test_termination_out_of_bounds_and_nan(pick_env, pick_fns):
  reset, step = pick_fns
  state = reset(_keys(3, 2))
  c = pick_env._cube_qpos
  qpos = state.data.qpos.at[0, c].set(1.2)  # env 0: cube far outside the workspace
  qvel = state.data.qvel.at[1, 0].set(jnp.nan)  # env 1: physics blew up
  state = state.replace(data=state.data.replace(qpos=qpos, qvel=qvel))
  out = step(state, jnp.zeros((3, 4)))
  np.testing.assert_array_equal(out.terminated, [1, 1, 0])
  np.testing.assert_array_equal(out.truncated, [0, 0, 0])
  np.testing.assert_array_equal(out.metrics["out_of_bounds"], [1, 0, 0])
  np.testing.assert_array_equal(out.metrics["nan_physics"], [0, 1, 0])
  assert np.all(np.isfinite(np.asarray(out.obs))) and np.all(np.isfinite(np.asarray(out.reward)))


# ----------------------------------------------------------------- auto-reset
def test_autoreset_resets_exactly_the_finished_envs(pick_env, pick_fns):
  _, step = pick_fns
  env = AutoResetWrapper(pick_env, 4)
  state = env.reset(jax.random.PRNGKey(11))
  jstep = jax.jit(env.step)
  act = jnp.full((4, 4), 0.3)
  for _ in range(3):
    state = jstep(state, act)
  c = pick_env._cube_qpos
  qpos = state.data.qpos.at[1, c].set(1.2).at[3, c].set(-1.0)  # envs 1 and 3 will end
  state = state.replace(data=state.data.replace(qpos=qpos))

  plain = step(state.replace(info={k: v for k, v in state.info.items()
                                   if k not in ("rng", "final_obs")}), act)
  out = jstep(state, act)
  np.testing.assert_array_equal(out.done, [0, 1, 0, 1])
  for i in (0, 2):  # untouched envs: the plain step (two compilations: float tolerance)
    np.testing.assert_allclose(out.obs[i], plain.obs[i], atol=1e-6)
    np.testing.assert_allclose(out.data.qpos[i], plain.data.qpos[i], atol=1e-6)
    assert int(out.info["step"][i]) == 4
  for i in (1, 3):  # finished envs: a fresh episode, the last obs kept as final_obs
    assert int(out.info["step"][i]) == 0
    cube = np.asarray(out.obs[i, 7:])
    assert 0.25 <= cube[0] <= 0.55 and -0.25 <= cube[1] <= 0.25
    np.testing.assert_allclose(out.info["final_obs"][i], plain.obs[i], atol=1e-6)
    np.testing.assert_allclose(out.info["target"][i], pick_env._home_tcp)
  # Episode statistics: length 4 for every env; the finished ones report their totals.
  np.testing.assert_array_equal(out.metrics["episode_length"], [4, 4, 4, 4])
  # After the reset, the finished envs' totals start again from zero.
  nxt = jstep(out, act)
  np.testing.assert_array_equal(nxt.metrics["episode_length"], [5, 1, 5, 1])
  np.testing.assert_allclose(nxt.metrics["episode_return"][1], nxt.reward[1], rtol=1e-6)


def test_reset_in_hand_curriculum():
  env = panda_rl.make("PandaPickCube-v0", reset_in_hand_prob=0.5)
  state = jax.jit(jax.vmap(env.reset))(_keys(256, 8))
  obs = PandaPickCube.obs_dict(np.asarray(state.obs))
  held = np.asarray(state.info["grip_cmd"]) == 1.0
  assert 0.3 < held.mean() < 0.7  # about half of the resets
  # Held: cube centred between the closed fingers at the TCP; lift counted from the floor.
  np.testing.assert_allclose(obs["cube_pos"][held], obs["tcp_pos"][held], atol=1e-3)
  np.testing.assert_allclose(obs["gripper_pos"][held], 0.039, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state.info["z_init"]), 0.02, atol=1e-6)
  # Not held: the ordinary reset.
  np.testing.assert_allclose(obs["cube_pos"][~held, 2], 0.02, atol=1e-6)
  np.testing.assert_allclose(obs["gripper_pos"][~held], 0.08, atol=1e-6)


def test_reset_pregrasp_curriculum_puts_the_open_hand_at_the_cube():
  env = panda_rl.make("PandaPickCube-v0", reset_pregrasp_prob=0.5)
  state = jax.jit(jax.vmap(env.reset))(_keys(256, 9))
  obs = PandaPickCube.obs_dict(np.asarray(state.obs))
  posed = np.linalg.norm(obs["tcp_pos"] - np.asarray(env._home_tcp), axis=-1) > 1e-3
  assert 0.35 < posed.mean() < 0.65  # about half of the resets
  rel = obs["tcp_pos"][posed] - obs["cube_pos"][posed]
  # Open hand over the cube: xy within the 1 cm jitter, TCP at one of the grid heights.
  assert np.all(np.abs(rel[:, :2]) <= 0.0101)
  heights = np.asarray(env.config.pregrasp_heights)
  assert np.all(np.min(np.abs(rel[:, 2:3] - heights[None]), axis=1) < 1e-3)
  np.testing.assert_allclose(obs["gripper_pos"], 0.08, atol=1e-6)
  np.testing.assert_allclose(obs["cube_pos"][:, 2], 0.02, atol=1e-6)  # on the floor
  # The target starts at the TCP, and the grid poses point the hand down like home.
  np.testing.assert_allclose(state.info["target"], obs["tcp_pos"], atol=1e-5)
  rot = np.asarray(state.data.site_xmat)[:, env._tcp].reshape(-1, 3, 3)
  np.testing.assert_allclose(rot[posed], np.broadcast_to(np.diag([1.0, -1.0, -1.0]),
                                                         rot[posed].shape), atol=1e-2)


def test_target_modes(pick_env, pick_fns):
  """"tcp": the step's target starts at the measured TCP; "accumulate": at the last target."""
  with pytest.raises(ValueError, match="target_mode"):
    panda_rl.make("PandaPickCube-v0", target_mode="absolute")
  action = jnp.array([[0.5, -0.5, 0.0, 0.0]])
  for mode in ("tcp", "accumulate"):
    if mode == "tcp":
      env, (reset, step) = pick_env, pick_fns
    else:
      env = panda_rl.make("PandaPickCube-v0", target_mode=mode)
      reset, step = jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step))
    assert env.config.target_mode == mode
    state = reset(_keys(1))
    state = state.replace(info=dict(state.info, target=state.info["target"] + 0.05))
    origin = (state.data.site_xpos[:, env._tcp] if mode == "tcp" else state.info["target"])
    expected = np.clip(origin + 0.1 * np.asarray(action[:, :3]), env.config.workspace_low,
                       env.config.workspace_high)
    out = step(state, action)
    np.testing.assert_allclose(out.info["target"], expected, atol=1e-6)


def test_gripper_modes_in_mjx_and_c_mujoco(pick_env, pick_fns):
  """"delta": the command moves by action_scale_grip * a[3] from the last one, clipped to
  [0, 1]; "absolute": the command is (a[3] + 1) / 2 whatever came before. Same in C MuJoCo."""
  from panda_rl.envs.pick_cube_c import PandaPickCubeC

  with pytest.raises(ValueError, match="gripper_mode"):
    panda_rl.make("PandaPickCube-v0", gripper_mode="toggle")
  a3 = np.array([-1.0, -0.4, 0.3, 1.0], np.float32)
  before = np.array([0.0, 0.7, 0.5, 0.2], np.float32)
  action = jnp.concatenate([jnp.zeros((4, 3)), jnp.asarray(a3)[:, None]], axis=1)
  expected = {"delta": np.clip(before + a3, 0.0, 1.0), "absolute": (a3 + 1.0) / 2.0}
  for mode in ("delta", "absolute"):
    if mode == "delta":
      reset, step = pick_fns
    else:
      env = panda_rl.make("PandaPickCube-v0", gripper_mode=mode)
      reset, step = jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step))
    state = reset(_keys(4))
    state = state.replace(info=dict(state.info, grip_cmd=jnp.asarray(before)))
    out = step(state, action)
    np.testing.assert_allclose(out.info["grip_cmd"], expected[mode], atol=1e-6)
    c_env = PandaPickCubeC(gripper_mode=mode)
    for i in range(4):
      c_env.reset_to(np.asarray(state.data.qpos[i]), grip_cmd=float(before[i]))
      c_env.step(np.asarray(action[i]))
      assert c_env.grip_cmd == pytest.approx(float(expected[mode][i]), abs=1e-6)


def test_eval_env_drops_training_only_curricula():
  from panda_rl.envs.registry import eval_overrides
  train = {"reset_pregrasp_prob": 0.4, "reset_in_hand_prob": 0.1, "episode_length": 50}
  assert eval_overrides("PandaPickCube-v0", train) == {"episode_length": 50}
  assert eval_overrides("PointReach-v0", {"episode_length": 7}) == {"episode_length": 7}
  import ml_collections
  from panda_rl.validation import env_settings
  cfg = ml_collections.ConfigDict({
      "train": {"env_id": "PandaPickCube-v0", "overrides": train},
      "eval": {"num_envs": 4}})
  assert env_settings(cfg.eval, cfg.train) == ("PandaPickCube-v0", {"episode_length": 50})
  assert env_settings(cfg.train, cfg.train) == ("PandaPickCube-v0", train)


def test_env_constants_live_on_this_process_device(pick_env):
  """MJX puts data on ``jax.devices()[0]`` unless told otherwise, which on a pod belongs to
  process 0; the env's model, home template and reset grids must sit on this process's own
  first device so every process can build and trace the env."""
  import panda_rl.envs.pick_cube  # noqa: F401

  env = panda_rl.make("PandaPickCube-v0", reset_pregrasp_prob=0.4)
  local = jax.local_devices()[0]
  arrays = [x for x in jax.tree.leaves((env._template, env._pregrasp.posed, env.mjx_model))
            if isinstance(x, jax.Array)]
  assert arrays and all(x.devices() == {local} for x in arrays)


def test_controller_rate_control_reuses_the_first_substeps_dynamics(pick_env, pick_fns):
  """"control" computes the Jacobian and task inertia once per control step: the same law
  (bit for bit) with one substep, a different trajectory with the default four."""
  with pytest.raises(ValueError, match="controller_rate"):
    panda_rl.make("PandaPickCube-v0", controller_rate="sometimes")
  ctrl = pick_env.controller
  data = pick_env._template
  target = pick_env._home_tcp + jnp.array([0.05, -0.03, -0.1])
  np.testing.assert_array_equal(ctrl.torque(data, target),
                                ctrl.torque_with(ctrl.dynamics(data), data, target))

  reset, step = pick_fns
  action = jnp.tile(jnp.array([[0.8, -0.6, -0.9, 0.0]]), (2, 1))
  state = reset(_keys(2))
  assert pick_env.config.controller_rate == "control"  # the default
  every = panda_rl.make("PandaPickCube-v0", controller_rate="substep")
  assert every.n_substeps == pick_env.n_substeps == 4
  a = jax.jit(jax.vmap(every.step))(state, action)
  b = step(state, action)
  gap = np.abs(np.asarray(a.data.qpos) - np.asarray(b.data.qpos)).max()
  assert 0 < gap < 1e-3, gap  # later substeps used the first's dynamics

  one = {"sim_dt": 0.02, "ctrl_dt": 0.02}
  per_sub = panda_rl.make("PandaPickCube-v0", controller_rate="substep", **one)
  per_step = panda_rl.make("PandaPickCube-v0", controller_rate="control", **one)
  run = lambda env: jax.jit(jax.vmap(env.step))(state, action)
  np.testing.assert_array_equal(run(per_sub).data.qpos, run(per_step).data.qpos)


def test_grasp_contact_settings_reach_mjx_and_c_mujoco():
  from panda_rl.envs.panda import GRASP_PAIRS
  from panda_rl.envs.pick_cube_c import PandaPickCubeC

  default = panda_rl.make("PandaPickCube-v0")
  # The defaults are MuJoCo's pair defaults, as the scene always had them.
  np.testing.assert_array_equal(default.mj_model.pair_friction[:, :2], 1.0)
  np.testing.assert_array_equal(default.mj_model.pair_solref[:, 0], 0.02)
  grasp = dict(grasp_friction=1.5, grasp_timeconst=0.03)
  mjx_env, c_env = panda_rl.make("PandaPickCube-v0", **grasp), PandaPickCubeC(**grasp)
  for model in (mjx_env.mj_model, mjx_env.mjx_model, c_env.model):
    friction, solref = np.asarray(model.pair_friction), np.asarray(model.pair_solref)
    for i in range(model.npair):
      name = mjx_env.mj_model.pair(i).name
      expected = (1.5, 0.03) if name in GRASP_PAIRS else (1.0, 0.02)  # floor pairs as before
      np.testing.assert_allclose(friction[i, :2], expected[0], rtol=1e-6)
      np.testing.assert_allclose(solref[i, 0], expected[1], rtol=1e-6)
