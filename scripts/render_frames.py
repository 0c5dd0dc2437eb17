"""Writes example frames of the JAX renderer (for the README): RGB, depth and geom ids.

    python scripts/render_frames.py --size 256 --out docs/images

Renders the task scene at its ``home`` keyframe (``--random N`` adds N random arm poses) from
every requested camera, and writes ``render_<camera>[_<i>].png`` (RGB) plus, with ``--all``,
``..._depth.png`` (near = bright) and ``..._seg.png`` (one colour per geom).
"""

import panda_rl  # noqa: F401  (XLA:CPU flags before JAX starts)

import argparse
import os

import imageio
import jax
import mujoco
import numpy as np
from mujoco import mjx

from panda_rl.render import Renderer, benchmark


def _depth_png(depth):
  hit = depth > 0
  if not hit.any():
    return np.zeros(depth.shape, np.uint8)
  near, far = depth[hit].min(), depth[hit].max()
  img = np.where(hit, 1.0 - (depth - near) / max(far - near, 1e-6), 0.0)
  return (255 * img).astype(np.uint8)


def _seg_png(seg):
  rng = np.random.default_rng(0)
  palette = rng.integers(40, 255, size=(int(seg.max()) + 2, 3)).astype(np.uint8)
  palette[0] = 0  # background (-1)
  return palette[seg + 1]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=benchmark.PANDA_XML)
  p.add_argument("--cameras", nargs="+", default=["front", "wrist"])
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--random", type=int, default=0, help="also render N random arm poses")
  p.add_argument("--all", action="store_true", help="also write depth and segmentation")
  p.add_argument("--out", default="docs/images")
  args = p.parse_args(argv)

  m = mujoco.MjModel.from_xml_path(args.model)
  d = mujoco.MjData(m)
  if m.nkey:
    mujoco.mj_resetDataKeyframe(m, d, 0)
  mujoco.mj_forward(m, d)
  states = [mjx.put_data(m, d)]
  if args.random:
    batch = benchmark.random_states(m, args.random, seed=1)
    states += [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(args.random)]
  renderer = Renderer(m, args.cameras, args.size, args.size,
                      outputs=("rgb", "depth", "segmentation"))
  render = jax.jit(renderer.render)
  os.makedirs(args.out, exist_ok=True)
  for i, state in enumerate(states):
    images = render(state)
    for cam, out in images.items():
      stem = os.path.join(args.out, f"render_{cam}" + (f"_{i}" if i else ""))
      imageio.imwrite(stem + ".png", np.asarray(out["rgb"]))
      if args.all:
        imageio.imwrite(stem + "_depth.png", _depth_png(np.asarray(out["depth"])))
        imageio.imwrite(stem + "_seg.png", _seg_png(np.asarray(out["segmentation"])))
      print("wrote", stem + ".png")


if __name__ == "__main__":
  main()
