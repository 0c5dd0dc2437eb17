"""Several seeds in one program (``runner.num_seeds``, panda_rl/seeds.py), PPO on the probe env
PointReach-v0 with a tiny config: seed k of a 2-seed run is the 1-seed run of ``runner.seed +
k``; per-seed TensorBoard runs and their mean / min / max; one checkpoint of every seed that
resumes exactly; ``load_policy(dir, seed=k)``; clear errors; ``learning_curve.py --plot``.
"""

import panda_rl  # noqa: F401  (first: XLA flags)

import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from panda_rl import metrics as M
from panda_rl import seeds
from panda_rl import validation
from panda_rl.checkpoint import CheckpointError
from panda_rl.config import ConfigError, load_config
from panda_rl.logger import read_scalars
from panda_rl.runner import train_and_evaluate
from script_modules import load_script

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")
TINY = [
    "env.train.env_id=PointReach-v0", "env.train.overrides={}", "env.train.num_envs=8",
    "env.eval.num_envs=4", "rollout.num_steps=16", "algorithm.num_minibatches=2",
    "algorithm.update_epochs=2", "actor.model.policy_hidden=(16,16)",
    "actor.model.value_hidden=(16,16)", "runner.val_check_interval=2",
    "runner.save_interval=2", "runner.max_epochs=3",
]
SEED = 5  # the 2-seed run trains seeds 5 and 6


def _config(log_path, *extra):
  return load_config(CONFIG, TINY + [f"runner.logger.log_path={log_path}", *extra])


@pytest.fixture(scope="module")
def two(tmp_path_factory):
  """3 iterations of 2 seeds (evaluations at 2 and 3, checkpoints at 2 and 3)."""
  log_path = tmp_path_factory.mktemp("two")
  return train_and_evaluate(_config(log_path, "runner.num_seeds=2", f"runner.seed={SEED}"))


@pytest.fixture(scope="module")
def one(tmp_path_factory):
  """The 1-seed run that seed 1 of ``two`` must be."""
  log_path = tmp_path_factory.mktemp("one")
  return train_and_evaluate(_config(log_path, f"runner.seed={SEED + 1}"))


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=1e-4, atol=1e-5), a, b)


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _copy_run(result, tmp_path) -> Path:
  """A copy of a run's log_path; returns the new log_path."""
  shutil.copytree(result.workdir.parent.parent, tmp_path / "runs")
  return tmp_path / "runs"


# --------------------------------------------------------------------------------------
# Seed k == the run of seed + k.


def test_seed_k_is_the_run_of_seed_plus_k(two, one):
  assert two.num_seeds == 2 and one.num_seeds == 1
  assert jax.tree.leaves(two.state.params)[0].shape[0] == 2  # the stacked state
  seed1 = two.seed_state(1)
  _close(seed1.params, one.state.params)
  _close(seed1.normalizer, one.state.normalizer)
  assert int(seed1.iteration) == int(one.state.iteration) == 3
  assert int(seed1.env_steps) == int(one.state.env_steps) == 3 * 8 * 16
  for name in (M.LOSS, M.EVAL_RETURN, M.EVAL_SUCCESS_ONCE):
    ours, theirs = two.per_seed[1][name], one.per_seed[0][name]
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], rtol=1e-4,
                               atol=1e-5)
  # ... and the seeds differ from each other.
  assert not np.allclose(jax.tree.leaves(two.seed_state(0).params)[0],
                         jax.tree.leaves(seed1.params)[0])


def test_result_carries_every_seeds_curves(two, one):
  assert len(two.per_seed) == 2 and len(one.per_seed) == 1
  assert [s for s, _ in two.per_seed[0][M.EVAL_SUCCESS_ONCE]] == [2, 3]
  assert [s for s, _ in two.per_seed[1][M.LOSS]] == [1, 2, 3]
  assert len(two.seed_eval_metrics) == 2
  assert M.LOSS + seeds.MIN_SUFFIX in two.metrics
  assert two.eval_metrics[M.EVAL_RETURN] == pytest.approx(
      np.mean([m[M.EVAL_RETURN] for m in two.seed_eval_metrics]))
  # One seed: the fields as they always were.
  assert M.LOSS + seeds.MIN_SUFFIX not in one.metrics
  assert one.eval_metrics == one.seed_eval_metrics[0]
  with pytest.raises(IndexError):
    two.seed_state(2)


# --------------------------------------------------------------------------------------
# Logging.


def test_each_seed_logs_its_own_run_and_the_run_dir_the_aggregate(two, one):
  assert seeds.seed_dirs(two.workdir) == [two.workdir / "seed_0", two.workdir / "seed_1"]
  assert seeds.seed_dirs(one.workdir) == []  # one seed: the layout as it always was
  per_seed = [read_scalars(d) for d in seeds.seed_dirs(two.workdir)]
  single = read_scalars(one.workdir)
  assert set(per_seed[0]) == set(per_seed[1]) == set(single)
  top = read_scalars(two.workdir)  # the seed_<k> runs are not mixed in
  assert [s for s, _, _ in top[M.LOSS]] == [1, 2, 3]
  for name in (M.LOSS, M.EVAL_RETURN, M.EVAL_SUCCESS_ONCE, M.RETURN):
    values = [{s: v for s, v, _ in run[name]} for run in per_seed]
    for suffix, fn in (("", np.mean), (seeds.MIN_SUFFIX, np.min), (seeds.MAX_SUFFIX, np.max)):
      logged = {s: v for s, v, _ in top[name + suffix]}
      assert sorted(logged) == sorted(values[0]), name + suffix
      for s, v in logged.items():
        np.testing.assert_allclose(v, fn([vs[s] for vs in values]), rtol=1e-6, atol=1e-6)
  assert M.WALL_S in top and M.WALL_S + seeds.MIN_SUFFIX not in top  # the run's clock
  _close([v for _, v, _ in per_seed[1][M.LOSS]], [v for _, v, _ in single[M.LOSS]])


def test_aggregate_skips_non_finite_values():
  out = seeds.aggregate([{"a": 1.0, "b": float("nan"), M.WALL_S: 3.0},
                         {"a": float("nan"), "b": float("nan"), M.WALL_S: 3.0},
                         {"a": 3.0, "b": float("nan"), M.WALL_S: 3.0}])
  assert (out["a"], out["a_min"], out["a_max"]) == (2.0, 1.0, 3.0)
  assert math.isnan(out["b"]) and math.isnan(out["b_min"])
  assert out[M.WALL_S] == 3.0 and M.WALL_S + "_min" not in out


# --------------------------------------------------------------------------------------
# Checkpoints and policies.


def test_checkpoint_of_two_seeds_resumes_exactly(two, tmp_path):
  log_path = _copy_run(two, tmp_path)
  run_dir = log_path / "panda_rl" / "mujoco_ppo_mlp"
  shutil.rmtree(run_dir / "checkpoints" / "3")  # as if killed before saving iteration 3
  resumed = train_and_evaluate(_config(log_path, "runner.num_seeds=2", f"runner.seed={SEED}",
                                       "runner.resume=True"))
  assert int(resumed.state.iteration[0]) == 3
  _equal(resumed.state, two.state)
  assert [s for s, _ in resumed.per_seed[1][M.LOSS]] == [3]
  for d in seeds.seed_dirs(run_dir):  # every seed's run purged at 3 and continued
    assert [s for s, _, _ in read_scalars(d)[M.LOSS]] == [1, 2, 3]


def test_load_policy_picks_the_seed(two):
  p1 = panda_rl.load_policy(two.workdir, seed=1)
  p0 = panda_rl.load_policy(two.workdir)
  assert (p0.seed, p1.seed, p1.num_seeds, p1.step) == (0, 1, 2, 3)
  _equal(p1.params, two.seed_state(1).params["policy"])
  _equal(p0.params, two.seed_state(0).params["policy"])
  _equal(p1.normalizer.mean, two.seed_state(1).normalizer.mean)
  obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  assert p1(obs).shape == (3, 2) and not np.allclose(p0(obs), p1(obs))


def test_wrong_seed_and_num_seeds_fail_clearly(two, one, tmp_path):
  with pytest.raises(ValueError, match=r"seed=2: .* holds 2 seed\(s\).*one of 0 \.\. 1"):
    panda_rl.load_policy(two.workdir, seed=2)
  with pytest.raises(ValueError, match="seed must be 0"):
    panda_rl.load_policy(one.workdir, seed=1)
  log_path = _copy_run(two, tmp_path)
  for count in (1, 3):
    with pytest.raises(CheckpointError, match=r"runner.num_seeds=2 seed\(s\).*asks for "
                                              rf"runner.num_seeds={count}"):
      train_and_evaluate(_config(log_path, f"runner.num_seeds={count}", "runner.resume=True",
                                 "runner.max_epochs=4"))


# --------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("value", [0, -1])
def test_num_seeds_must_be_a_positive_int(value, tmp_path):
  with pytest.raises(ConfigError, match="runner.num_seeds must be an int >= 1"):
    _config(tmp_path, f"runner.num_seeds={value}")


def test_several_seeds_need_the_collocated_placement(tmp_path):
  devices = [jax.devices()[0]] * 8  # only counted: nothing runs on them
  split = "cluster.component_placement=env:0-3;rollout:4-7;actor:0-7"
  with pytest.raises(ConfigError, match=r"runner.num_seeds=2 .* needs the collocated "
                                        "placement"):
    validation.check(_config(tmp_path, "runner.num_seeds=2", split), devices=devices)
  validation.check(_config(tmp_path, "runner.num_seeds=1", split), devices=devices)
  validation.check(_config(tmp_path, "runner.num_seeds=2"), devices=devices)


# --------------------------------------------------------------------------------------
# scripts/learning_curve.py


def _learning_curve():
  return load_script("learning_curve")


def test_learning_curve_plots_and_tabulates_every_seed(two, one, tmp_path, capsys):
  lc = _learning_curve()
  png, out = tmp_path / "curve.png", tmp_path / "curve.json"
  lc.main([str(two.workdir), "--plot", str(png), "--json", str(out), "--thresholds", "0"])
  data = png.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  report = json.loads(out.read_text())
  assert [s["seed"] for s in report["seeds"]] == [SEED, SEED + 1]  # PRNG seeds
  assert [r["iteration"] for r in report["seeds"][1]["curve"]] == [2, 3]
  assert "eval_success_min" in report["curve"][0]
  assert f"seed {SEED + 1}: iteration 2" in capsys.readouterr().out
  lc.main([str(one.workdir), "--plot"])  # one seed: one line, the default path
  assert (one.workdir / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
  # Several runs merge their seeds; ``one`` is seed 6 again, so it cannot join ``two``.
  with pytest.raises(SystemExit, match=f"seed {SEED + 1} appears in more than one"):
    lc.main([str(two.workdir), str(one.workdir)])
  # A saved report joins a run: here the 2-seed report (seeds 5, 6) and a 1-seed run of 7.
  other = _copy_run(one, tmp_path / "other") / Path(*one.workdir.parts[-2:])
  config = json.loads((other / "config.json").read_text())
  config["runner"]["seed"] = SEED + 2
  (other / "config.json").write_text(json.dumps(config))
  lc.main([str(out), str(other), "--json", str(tmp_path / "merged.json")])
  merged = json.loads((tmp_path / "merged.json").read_text())
  assert [s["seed"] for s in merged["seeds"]] == [SEED, SEED + 1, SEED + 2]
  assert [r["iteration"] for r in merged["curve"]] == [2, 3]


def test_learning_curve_merges_the_seeds_of_several_runs():
  lc = _learning_curve()
  row = lambda it, s: {"iteration": it, "env_steps": 10 * it, "wall_s": float(it),
                       "eval_success": s, "train_success_once": s}
  seeds = {0: [row(1, 0.2), row(2, 0.6)], 3: [row(1, 0.4), row(2, 1.0), row(3, 1.0)]}
  mean = lc.mean_curve(seeds)
  assert [r["iteration"] for r in mean] == [1, 2]  # the iterations every seed evaluated
  np.testing.assert_allclose([r["eval_success"] for r in mean], [0.3, 0.8])
  assert (mean[1]["eval_success_min"], mean[1]["eval_success_max"]) == (0.6, 1.0)


def test_learning_curve_reads_time_to_success_reports(tmp_path, capsys):
  lc = _learning_curve()
  evals = lambda *succ: [{"iteration": 10 * (i + 1), "env_steps": 1000 * (i + 1),
                          "success": s, "seconds": 30.0 * (i + 1)} for i, s in enumerate(succ)]
  config = tmp_path / "cfg.py"  # the seed comes from the config when no override names it
  config.write_text("import ml_collections\n"
                    "def get_config():\n"
                    "  c = ml_collections.ConfigDict()\n"
                    "  c.runner = ml_collections.ConfigDict(dict(seed=4))\n"
                    "  return c\n")
  reports = {"a.json": dict(config=str(config), overrides=["runner.seed=1"],
                            evals=evals(0.0, 0.5, 0.9)),
             "b.json": dict(config=str(config), overrides=["env.train.num_envs=8"],
                            evals=evals(0.0, 0.25))}
  for name, report in reports.items():
    (tmp_path / name).write_text(json.dumps(report))
  out, png = tmp_path / "out.json", tmp_path / "out.png"
  lc.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json", str(out),
           "--thresholds", "0.8", "--plot", str(png), "--title", "two reports"])
  merged = json.loads(out.read_text())
  assert [s["seed"] for s in merged["seeds"]] == [1, 4]
  first = merged["seeds"][0]["first_reaching"]["0.8"]
  assert (first["iteration"], first["env_steps"], first["wall_s"], first["eval_success"]) == (
      30, 3000, 90.0, 0.9)
  assert merged["seeds"][1]["first_reaching"]["0.8"] is None
  np.testing.assert_allclose([r["eval_success"] for r in merged["curve"]], [0.0, 0.375])
  assert png.read_bytes()[:4] == b"\x89PNG"
  assert "seed 1: iteration 30, 3,000 env steps, 90 s" in capsys.readouterr().out
  (tmp_path / "c.json").write_text(json.dumps({"evals": [], "config": "gone.py"}))
  with pytest.raises(SystemExit, match="no runner.seed override and its config 'gone.py'"):
    lc.main([str(tmp_path / "c.json")])
  (tmp_path / "d.json").write_text(json.dumps({"curve": []}))
  with pytest.raises(SystemExit, match="neither a multi-seed report"):
    lc.main([str(tmp_path / "d.json")])


def test_evaluate_cli_function_evaluates_the_chosen_seed(two):
  from panda_rl.evaluate import evaluate_checkpoint

  out = evaluate_checkpoint(str(two.workdir), episodes=4, policy_seed=1)
  assert out["policy_seed"] == 1 and out[M.EVAL_NUM_EPISODES] == 4
  with pytest.raises(ValueError, match="one of 0 .. 1"):
    evaluate_checkpoint(str(two.workdir), episodes=4, policy_seed=5)
