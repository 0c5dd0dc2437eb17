"""Real interruptions: ``python -m panda_rl.train`` (PPO on PointReach-v0, a checkpoint every
iteration) is SIGKILLed at random moments -- while it trains, while orbax writes a checkpoint
in the background, or while it renames one into place -- then resumed with
``--config.runner.resume=True``. Every resume must restore the newest complete checkpoint, no
complete checkpoint that existed before a kill may be lost, leftovers of interrupted saves stay
until that step is saved again, and the run must end with the parameters of an uninterrupted run (training is
deterministic per iteration and resume is exact).

The kill times are seeded (``random.Random(SEED)``): the delays are reproducible, what the
process was doing at that moment depends on the machine's speed.
"""

import panda_rl  # noqa: F401  (first: XLA flags)

import random
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from panda_rl import metrics as M
from panda_rl.checkpoint import Checkpointer
from panda_rl.logger import read_scalars

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mujoco_ppo_mlp.py")
RUN = ("panda_rl", "mujoco_ppo_mlp")
SEED = 20240616
EPOCHS = 40
KILLS = 3
MAX_DELAY_S = 1.5  # after the process's first new complete checkpoint

TINY = [
    "--config.env.train.env_id=PointReach-v0", "--config.env.train.overrides={}",
    "--config.env.train.num_envs=8", "--config.env.eval.num_envs=4",
    "--config.rollout.num_steps=16", "--config.algorithm.num_minibatches=2",
    "--config.algorithm.update_epochs=2", "--config.actor.model.policy_hidden=(16,16)",
    "--config.actor.model.value_hidden=(16,16)", "--config.runner.val_check_interval=10",
    "--config.runner.save_interval=1", "--config.runner.max_to_keep=0",
    f"--config.runner.max_epochs={EPOCHS}",
]


def _args(log_path, *extra):
  return [sys.executable, "-m", "panda_rl.train", f"--config={CONFIG}", *TINY,
          f"--config.runner.logger.log_path={log_path}", *extra]


def _complete(ckdir: Path):
  """Complete steps as the trainer sees them (orbax: renamed step dirs, not tmp dirs)."""
  if not ckdir.is_dir():
    return []
  with Checkpointer(ckdir, read_only=True) as ck:
    return ck.all_steps()


def _wait_for_new_checkpoint(proc, ckdir: Path, after: int, timeout=300.0):
  t0 = time.monotonic()
  while time.monotonic() - t0 < timeout:
    steps = _complete(ckdir)
    if steps and steps[-1] > after:
      return steps
    if proc.poll() is not None:
      pytest.fail(f"training exited (rc={proc.returncode}) before a new checkpoint:\n"
                  f"{proc.log.read_text()[-6000:]}")
    time.sleep(0.05)
  proc.kill()
  pytest.fail(f"no checkpoint after step {after} within {timeout}s")


def _state(ckdir: Path, step: int):
  with Checkpointer(ckdir, read_only=True) as ck:
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                            ck.saved_tree(step), is_leaf=lambda x: hasattr(x, "dtype"))
    state, _, _ = ck.restore(abstract, step=step)
  return jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]


def test_sigkill_at_random_moments_then_resume(cli_env, tmp_path):
  rng = random.Random(SEED)
  log_path = tmp_path / "killed"
  ckdir = log_path.joinpath(*RUN, "checkpoints")
  seen_complete = set()  # every complete step listed before some kill
  restored_from, kill_log = [], []
  resume = []
  for kill in range(KILLS):
    # Output goes to a file, not a pipe: nothing reads a pipe while the test waits, and a
    # full one (64 KiB: XLA logs a few KB per program it reads from the cache on AVX-512
    # machines) would block the run before its first checkpoint.
    log = tmp_path / f"run_{kill}.log"
    with open(log, "w") as sink:
      proc = subprocess.Popen(_args(log_path, *resume), cwd=REPO, env=cli_env, stdout=sink,
                              stderr=subprocess.STDOUT, text=True)
    proc.log = log
    try:
      before = _complete(ckdir)
      start = before[-1] if before else 0
      _wait_for_new_checkpoint(proc, ckdir, start)
      time.sleep(rng.uniform(0.0, MAX_DELAY_S))
      listed = _complete(ckdir)
      assert proc.poll() is None, f"kill {kill}: training already finished; raise EPOCHS"
    finally:
      proc.kill()  # SIGKILL: no cleanup, no waiting for the background save
    proc.wait()
    out = log.read_text()
    if kill > 0:  # each restart restored the newest complete checkpoint
      assert f"Resumed from checkpoint step {start}" in out, out[-3000:]
      restored_from.append(start)
    after = _complete(ckdir)
    assert set(listed) <= set(after), (kill, listed, after)  # nothing complete was lost
    if kill == 0:  # every checkpoint flushes the loggers: a kill keeps every scalar up to it
      logged = {s for s, _, _ in read_scalars(log_path.joinpath(*RUN))[M.LOSS]}
      assert set(range(1, listed[-1] + 1)) <= logged, (listed, sorted(logged))
    seen_complete |= set(listed)
    tmp = [p.name for p in ckdir.iterdir() if not p.name.isdigit()]
    kill_log.append((listed[-1], after[-1], tmp))
    resume = ["--config.runner.resume=True"]

  leftovers = {p.name for p in ckdir.iterdir() if not p.name.isdigit()}
  newest = _complete(ckdir)[-1]
  proc = subprocess.run(_args(log_path, *resume), cwd=REPO, env=cli_env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert f"Resumed from checkpoint step {newest}" in proc.stdout, proc.stdout[-3000:]
  restored_from.append(newest)
  final = _complete(ckdir)
  assert final[-1] == EPOCHS
  assert seen_complete <= set(final)
  assert final == list(range(final[0], EPOCHS + 1))  # one per iteration, no gap
  # A save killed mid-way leaves `<step>.orbax-checkpoint-tmp`; nothing deletes it, except
  # orbax itself when the resumed run saves that same step again (it replaces the unfinished
  # directory with the complete checkpoint).
  for name in leftovers:
    assert (ckdir / name).exists() or int(name.split(".")[0]) in final, name
  print(f"kills (newest listed, newest after kill, leftovers): {kill_log}; "
        f"restored from {restored_from}")

  # The same run without interruptions: identical checkpoints where the runs restarted, and
  # identical final parameters (and optimizer, normaliser, env state, key, counters).
  straight = tmp_path / "straight"
  _ = subprocess.run(_args(straight), cwd=REPO, env=cli_env, capture_output=True, text=True,
                     timeout=600, check=True)
  ref_dir = straight.joinpath(*RUN, "checkpoints")
  for step in sorted(set(restored_from) | {EPOCHS}):
    got, want = _state(ckdir, step), _state(ref_dir, step)
    assert len(got) == len(want) > 10
    for (path, x), (_, y) in zip(got, want):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                    err_msg=f"step {step}: {jax.tree_util.keystr(path)}")
