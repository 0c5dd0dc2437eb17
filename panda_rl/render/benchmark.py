"""Renderer-only throughput: images/s and time per frame for batches of random states.

``benchmark_renderer`` is the function ``scripts/benchmark_render.py`` prints and that env
benchmarks can call to report rendering cost next to physics. Each row times one compiled
``jit(vmap(renderer.render))`` on a fixed batch of random arm configurations (kinematics from
C MuJoCo, so no physics is timed), after one warm-up call; the median of ``repeats`` calls
is reported. ``baseline_sizes`` also times MJX's own ``mjx.ray`` vmapped over every pixel (the
naive approach, depth + geom id only) at those sizes and the same batches, in the same
process, for a ratio that survives the noise of shared machines.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx

from panda_rl.render import camera as camera_lib
from panda_rl.render.renderer import Renderer

PANDA_XML = os.path.join(os.path.dirname(os.path.dirname(__file__)), "envs", "assets",
                         "panda_pick_cube.xml")


def random_states(m: mujoco.MjModel, batch: int, seed: int = 0) -> mjx.Data:
  """A batch of states: arm joints within +-0.6 rad of the first keyframe (or qpos0),
  clipped to their ranges, and the free bodies left where the keyframe puts them."""
  rng = np.random.default_rng(seed)
  d = mujoco.MjData(m)
  datas = []
  for _ in range(batch):
    if m.nkey:
      mujoco.mj_resetDataKeyframe(m, d, 0)
    else:
      mujoco.mj_resetData(m, d)
    for j in range(m.njnt):
      if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE:
        a = m.jnt_qposadr[j]
        q = d.qpos[a] + rng.uniform(-0.6, 0.6)
        lo, hi = m.jnt_range[j]
        if lo < hi:  # a range, enforced by the physics (limited) or not
          q = np.clip(q, lo, hi)
        d.qpos[a] = q
    mujoco.mj_forward(m, d)
    datas.append(mjx.put_data(m, d))
  return jax.tree.map(lambda *x: jnp.stack(x), *datas)


def _time(fn, args, repeats: int) -> tuple[float, float]:
  """(compile + first call seconds, median seconds per call)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def _mjx_ray_images(m: mujoco.MjModel, cameras: Sequence[str], size: int):
  """The naive baseline: mjx.ray vmapped over all pixels of each camera (seg + depth)."""
  mx = mjx.put_model(m)
  ids = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in cameras]
  dirs = {i: jnp.asarray(camera_lib.pixel_directions(size, size, float(m.cam_fovy[i]))
                         .reshape(-1, 3), jnp.float32) for i in ids}
  group = (1, 1, 1, 0, 0, 0)

  def render(d):
    out = {}
    for i in ids:
      world = dirs[i] @ d.cam_xmat[i].T
      dist, geom = jax.vmap(lambda v, i=i: mjx.ray(mx, d, d.cam_xpos[i], v, group))(world)
      out[i] = (dist.reshape(size, size), geom.reshape(size, size))
    return out
  return render


def _with_material(m: mujoco.MjModel) -> mujoco.MjModel:
  """``m`` with one unused material if it has none: ``mjx.ray`` indexes ``mat_rgba`` with
  ``geom_matid`` and does not trace without materials."""
  if m.nmat:
    return m
  with tempfile.NamedTemporaryFile("r", suffix=".xml") as f:
    mujoco.mj_saveLastXML(f.name, m)
    spec = mujoco.MjSpec.from_string(f.read())
  spec.add_material(name="_bench_dummy")
  return spec.compile()


def benchmark_renderer(model_path: str = PANDA_XML,
                       cameras: Sequence[str] = ("front", "wrist"),
                       resolutions: Sequence[int] = (64, 128),
                       batch_sizes: Sequence[int] = (16, 32, 64),
                       outputs: Sequence[str] = ("rgb",),
                       repeats: int = 10, seed: int = 0,
                       baseline_sizes: Sequence[int] = (),
                       **renderer_kwargs) -> List[Dict]:
  """Times the renderer; one row per (resolution, batch), plus ``mjx.ray`` baseline rows for
  the resolutions in ``baseline_sizes`` (slow: ~15x slower than the renderer).

  Returns rows with: method, height, width, batch, cameras, compile_s, call_ms,
  ms_per_frame (renderer time per env step, all cameras), images_per_s (camera images).
  """
  m = mujoco.MjModel.from_xml_path(model_path)
  rows = []
  for size in resolutions:
    renderer = Renderer(m, cameras, size, size, outputs=outputs, **renderer_kwargs)
    fn = jax.jit(jax.vmap(renderer.render))
    for batch in batch_sizes:
      data = random_states(m, batch, seed)
      first, call = _time(fn, (data,), repeats)
      rows.append(_row("jax_raycast", size, batch, len(cameras), first, call))
    if size in baseline_sizes:
      mb = _with_material(m)
      fn = jax.jit(jax.vmap(_mjx_ray_images(mb, cameras, size)))
      for batch in batch_sizes:
        data = random_states(mb, batch, seed)
        first, call = _time(fn, (data,), max(2, repeats // 3))
        rows.append(_row("mjx.ray_per_pixel", size, batch, len(cameras), first, call))
  return rows


def _row(method, size, batch, ncam, first, call):
  return {"method": method, "height": size, "width": size, "batch": batch, "cameras": ncam,
          "compile_s": round(first - call, 2), "call_ms": round(call * 1e3, 3),
          "ms_per_frame": round(call * 1e3 / batch, 4),
          "images_per_s": round(batch * ncam / call, 1)}


def format_table(rows: List[Dict]) -> str:
  cols = ["method", "height", "width", "batch", "cameras", "compile_s", "call_ms",
          "ms_per_frame", "images_per_s"]
  lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
  lines += [" | ".join(str(r[c]) for c in cols) for r in rows]
  return "\n".join(lines)
