"""Ground truth from MuJoCo's C ray caster, for fidelity checks of the JAX renderer.

``mj_ray_image`` casts ``mujoco.mj_ray`` along every pixel ray of an MJCF camera (the same
rays as the renderer: MuJoCo's pinhole model, pixel centres, unit-norm directions, so the
returned distance is metric) and ``compare`` scores a rendered segmentation/depth pair
against it. Slow (one C call per pixel); meant for tests and benchmarks on small images.
"""

from __future__ import annotations

from typing import Dict, Sequence

import mujoco
import numpy as np

from panda_rl.render import camera as camera_lib


def geomgroup_mask(geom_groups: Sequence[int] | None) -> np.ndarray | None:
  """The ``geomgroup`` argument of mj_ray for a renderer's ``geom_groups``."""
  if geom_groups is None:
    return None
  mask = np.zeros(mujoco.mjNGROUP, np.uint8)
  mask[list(geom_groups)] = 1
  return mask


def mj_ray_image(m: mujoco.MjModel, d: mujoco.MjData, camera: str, height: int, width: int,
                 geom_groups: Sequence[int] | None = (0, 1, 2)) -> Dict[str, np.ndarray]:
  """Segmentation and depth of one camera by ``mj_ray`` (flg_static=1, bodyexclude=-1).

  ``d`` must hold kinematics and camera poses (``mj_forward``). Returns
  {"segmentation": [H, W] int32 geom id or -1, "depth": [H, W] float64 distance or -1}.
  """
  cam_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, camera)
  if cam_id < 0:
    raise ValueError(f"no camera {camera!r}")
  origin, dirs = camera_lib.world_rays(d.cam_xpos[cam_id], d.cam_xmat[cam_id], height, width,
                                       float(m.cam_fovy[cam_id]))
  group = geomgroup_mask(geom_groups)
  seg = np.full((height, width), -1, np.int32)
  depth = np.full((height, width), -1.0)
  geomid = np.zeros(1, np.int32)
  for i in range(height):
    for j in range(width):
      depth[i, j] = mujoco.mj_ray(m, d, origin, dirs[i, j], group, 1, -1, geomid)
      seg[i, j] = geomid[0]
  return {"segmentation": seg, "depth": depth}


def compare(rendered: Dict[str, np.ndarray], reference: Dict[str, np.ndarray],
            max_depth: float = 10.0) -> Dict[str, float]:
  """Agreement of a rendered camera with ``mj_ray_image``.

  Depth is compared where both hit the same geom closer than ``max_depth``: float32 cannot
  resolve millimetres for rays that graze an infinite floor kilometres away (the plane
  distance -z/dz has a relative error ~1e-7/|dz|), and no task geometry lies that far.

  Returns:
    seg_agreement: share of pixels whose geom id (or background) matches.
    depth_max_err: largest |depth difference| (m) over pixels where both hit the same geom
      closer than ``max_depth``.
    pixels: number of pixels compared.
  """
  seg, ref_seg = np.asarray(rendered["segmentation"]), reference["segmentation"]
  agree = seg == ref_seg
  both = agree & (ref_seg >= 0) & (reference["depth"] < max_depth)
  err = 0.0
  if "depth" in rendered and both.any():
    err = float(np.max(np.abs(np.asarray(rendered["depth"], np.float64)[both]
                              - reference["depth"][both])))
  return {"seg_agreement": float(agree.mean()), "depth_max_err": err,
          "pixels": int(agree.size)}
