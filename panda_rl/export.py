"""Exports a trained policy: ``python -m panda_rl.export --checkpoint DIR --format onnx``.

Writes the *deterministic* policy (the Gaussian mean, clipped to [-1, 1]) of a checkpoint
with its observation normaliser folded in, so the file maps raw env observations to actions:

* ``DIR/policy.onnx`` (or ``--out FILE``): an ONNX model converted by ``jax2onnx`` from the
  same pure function training and :func:`panda_rl.load_policy` run (:func:`panda_rl.policy.
  act_fn`), the parameters as constants. Inputs: ``obs`` float32 [batch, D] for state envs;
  for dict observations (vision) one input per key in sorted order (images uint8
  [batch, H, W, 3], ``instruction`` int32 [batch, L], proprioception float32). Output:
  ``action`` float32 [batch, A]. The batch size is free.
* ``FILE.json`` next to it (``policy.json``): the observation layout, the action bounds and
  meaning, the control rate and the controller settings the actions assume, the env and the
  whole training config, and the largest difference between onnxruntime's and JAX's actions
  on a few random observations when onnxruntime is installed.

Needs the optional extra: ``pip install 'panda_rl[export]'`` (jax2onnx, onnxruntime); without
it the command says so and exits with status 2. ``tests/test_export.py`` runs the file with
onnxruntime on 1,000 observations and matches the JAX policy to 1e-5.
"""

import panda_rl  # noqa: F401  (first: sets XLA:CPU flags before any JAX backend starts)

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import jax
import numpy as np

FORMATS = ("onnx",)
INSTALL_HINT = ("pip install 'panda_rl[export]' (from a checkout: pip install -e '.[export]'), "
                "which installs jax2onnx and onnxruntime")
ACTION_NAMES = ("dx", "dy", "dz", "grip")  # the pick-cube envs' action components
CHECK_OBSERVATIONS = 64  # random observations compared at export time


class MissingDependencyError(ImportError):
  """An optional package the export needs is not installed."""


class Exported(NamedTuple):
  model: Path
  sidecar: Path
  max_abs_diff: Optional[float]


def require(module: str, what: str) -> Any:
  """Imports ``module`` or fails with the pip command that installs it."""
  import importlib

  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingDependencyError(f"{what} needs the optional package {module!r}, which is "
                                 f"not installed: {INSTALL_HINT}") from e


# --------------------------------------------------------------------------------------
# What the policy reads and writes.


def observation_spec(env) -> Dict[str, jax.ShapeDtypeStruct]:
  """name -> ShapeDtypeStruct of one observation (flat observations are named ``obs``)."""
  obs = jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs
  if isinstance(obs, dict):
    return {k: obs[k] for k in sorted(obs)}
  return {"obs": obs}


def flat_layout(env, size: int) -> List[Dict[str, Any]]:
  """[{name, start, size}] of a flat observation, from the env's ``obs_dict``."""
  try:
    parts = env.obs_dict(np.arange(size))
  except (AttributeError, NotImplementedError, TypeError):
    return [{"name": "obs", "start": 0, "size": size}]
  return [{"name": k, "start": int(v[0]), "size": int(v.shape[-1])} for k, v in parts.items()]


def random_observations(spec: Dict[str, Any], n: int, rng: np.random.Generator,
                        normalizer: Any = None) -> Dict[str, np.ndarray]:
  """``n`` observations per input: floats around the normaliser's mean (+- 3 std, so
  some reach its clip), images uniform uint8, token ids uniform in the vocabulary."""
  from panda_rl.envs.language import VOCAB_SIZE

  means = (normalizer.mean if normalizer is not None and isinstance(normalizer.mean, dict)
           else {"obs": None if normalizer is None else normalizer.mean})
  var = (normalizer.var if normalizer is not None and isinstance(normalizer.var, dict)
         else {"obs": None if normalizer is None else normalizer.var})
  out = {}
  for name, s in spec.items():
    shape = (n,) + tuple(s.shape)
    if s.dtype == np.uint8:
      out[name] = rng.integers(0, 256, shape, dtype=np.uint8)
    elif np.issubdtype(s.dtype, np.integer):
      out[name] = rng.integers(0, VOCAB_SIZE, shape).astype(s.dtype)
    else:
      m = np.zeros(s.shape) if means.get(name) is None else np.asarray(means[name])
      sd = np.ones(s.shape) if var.get(name) is None else np.sqrt(np.asarray(var[name]))
      out[name] = (m + 3.0 * sd * rng.standard_normal(shape)).astype(np.float32)
  return out


def policy_function(policy, spec: Dict[str, Any]):
  """``f(*inputs) -> action``: the loaded policy's pure function, parameters closed over."""
  names = list(spec)
  params, stats, apply = policy.params, policy.normalizer, policy.apply

  def f(*inputs):
    obs = inputs[0] if names == ["obs"] else dict(zip(names, inputs))
    return apply(params, stats, obs)

  return f


# --------------------------------------------------------------------------------------
# The files.


def to_onnx(policy, spec: Dict[str, Any], path: Path) -> Path:
  """Converts the policy with jax2onnx (dynamic batch axis ``batch``); writes ``path``."""
  jax2onnx = require("jax2onnx", "ONNX export")
  require("onnx", "ONNX export")
  (batch,) = jax.export.symbolic_shape("batch")
  inputs = [jax.ShapeDtypeStruct((batch,) + tuple(s.shape), s.dtype) for s in spec.values()]
  quiet = logging.getLogger("onnx_ir")  # "value type ... not known" for shape constants
  level = quiet.level
  quiet.setLevel(logging.ERROR)
  try:
    model = jax2onnx.to_onnx(policy_function(policy, spec), inputs, model_name="panda_rl_policy",
                             input_names=list(spec), output_names=["action"])
  finally:
    quiet.setLevel(level)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.partial")
  tmp.write_bytes(model.SerializeToString())
  tmp.replace(path)
  return path


def onnx_actions(path: Path, feeds: Dict[str, np.ndarray]) -> np.ndarray:
  """Runs the exported file with onnxruntime (CPU)."""
  ort = require("onnxruntime", "Running the exported policy")
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(["action"], feeds)[0]


def max_abs_diff(policy, spec, path: Path, n: int, seed: int = 0) -> float:
  """Largest |onnxruntime action - JAX action| over ``n`` random observations."""
  feeds = random_observations(spec, n, np.random.default_rng(seed), policy.normalizer)
  ref = np.asarray(policy_function(policy, spec)(*feeds.values()))
  return float(np.max(np.abs(onnx_actions(path, feeds) - ref)))


def sidecar(policy, env_id: str, overrides: Dict[str, Any], env, spec: Dict[str, Any],
            model_path: Path, diff: Optional[float]) -> Dict[str, Any]:
  """The JSON description of the exported policy."""
  from panda_rl.config import config_to_dict

  cfg = getattr(env, "config", {})
  get = lambda k: cfg[k] if k in cfg else None
  inputs = []
  for name, s in spec.items():
    entry = {"name": name, "shape": ["batch"] + list(s.shape), "dtype": str(np.dtype(s.dtype))}
    if name == "obs":
      entry["layout"] = flat_layout(env, int(s.shape[-1]))
    inputs.append(entry)
  n_act = int(policy.action_size)
  ctrl_dt = get("ctrl_dt")
  return {
      "format": "onnx", "model": model_path.name, "producer": "panda_rl",
      "policy": "deterministic: the Gaussian mean, clipped to the action bounds",
      "normalizer_folded": bool(policy.config.algorithm.normalize_obs),
      "inputs": inputs,
      "output": {"name": "action", "shape": ["batch", n_act], "dtype": "float32",
                 "low": [-1.0] * n_act, "high": [1.0] * n_act,
                 "components": list(ACTION_NAMES) if n_act == 4 else None},
      "control": {"rate_hz": 1.0 / ctrl_dt if ctrl_dt else None, "ctrl_dt": ctrl_dt,
                  **{k: get(k) for k in ("sim_dt", "action_scale_xyz", "action_scale_grip",
                                         "gripper_mode", "target_mode", "workspace_low",
                                         "workspace_high", "max_finger_opening",
                                         "episode_length")}},
      "env_id": env_id, "env_overrides": dict(overrides),
      "checkpoint_step": int(policy.step),
      "check": {"observations": CHECK_OBSERVATIONS, "max_abs_diff": diff},
      "config": config_to_dict(policy.config),
  }


def export(checkpoint: str, fmt: str = "onnx", out: Optional[str] = None,
           step: Optional[int] = None) -> Exported:
  """Writes ``checkpoint``'s deterministic policy as ``fmt`` plus its JSON sidecar.

  ``out`` defaults to ``<run dir>/policy.onnx`` (``checkpoint`` being the run directory, its
  ``checkpoints/`` directory or one step directory).
  """
  from panda_rl.evaluate import default_video_dir, eval_env_settings

  if fmt not in FORMATS:
    raise ValueError(f"unknown export format {fmt!r}; supported: {list(FORMATS)}")
  require("jax2onnx", "ONNX export")
  policy = panda_rl.load_policy(checkpoint, step=step, deterministic=True)
  env_id, overrides = eval_env_settings(policy.config)
  env = panda_rl.make(env_id, **overrides)
  spec = observation_spec(env)
  if out is None:
    out = default_video_dir(checkpoint).parent.parent / "policy.onnx"  # the run directory
  path = to_onnx(policy, spec, Path(out))
  diff = None
  try:
    diff = max_abs_diff(policy, spec, path, CHECK_OBSERVATIONS)
  except MissingDependencyError:
    pass
  side = path.with_suffix(".json")
  side.write_text(json.dumps(sidecar(policy, env_id, overrides, env, spec, path, diff),
                             indent=2, sort_keys=False) + "\n")
  return Exported(path, side, diff)


def _define_flags():
  from absl import flags

  flags.DEFINE_string("checkpoint", None, "Run directory, its checkpoints/ directory, or "
                      "one checkpoints/<step> directory.")
  flags.DEFINE_enum("format", "onnx", list(FORMATS), "Export format.")
  flags.DEFINE_string("out", None, "Output file (default: <run dir>/policy.onnx); the JSON "
                      "sidecar is written beside it with the suffix .json.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest complete one).")
  flags.mark_flags_as_required(["checkpoint"])


def main(argv) -> None:

  from panda_rl.checkpoint import CheckpointError
  from panda_rl.cli import fail, start

  f = start(argv)
  try:
    result = export(f.checkpoint, f.format, f.out, f.step)
  except (CheckpointError, ValueError, MissingDependencyError, OSError) as e:
    fail("panda_rl.export", e)
  print(f"policy: {result.model}")
  print(f"sidecar: {result.sidecar}")
  if result.max_abs_diff is None:
    print("not checked: onnxruntime is not installed")
  else:
    print(f"onnxruntime vs JAX on {CHECK_OBSERVATIONS} random observations: max |action "
          f"difference| = {result.max_abs_diff:.2e}")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
