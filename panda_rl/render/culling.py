"""Which geoms can a tile of pixels see? A conservative cone test on bounding capsules.

Every non-plane geom is enclosed in a *bounding capsule* (a segment with a radius): exact for
capsules, the same segment for cylinders and spheres, and the longest axis with the radius of
the other two half sizes for boxes and ellipsoids. Every image tile is enclosed in a *cone*
from the camera centre (axis ``c``, half-angle ``alpha``) that contains all its pixel rays.

Seen from the camera, the segment's points lie along the great-circle arc between the
directions of its end points, and every point within ``r`` of a segment point S lies within
``asin(r / |S|) <= asin(r / d)`` of S's direction (d: the distance from the camera to the
segment). So a ray of the tile can only hit the geom if

    angle(c, arc) <= alpha + asin(r / d),

and a camera closer than ``r`` to the segment must test the geom everywhere. The test needs
no per-pixel work and no projection, handles geoms behind the camera (they fail it) and
straddling the image plane, and is far tighter than screen rectangles for the long, thin,
diagonal capsules a robot arm is made of.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from panda_rl.render import scene as scene_lib

_EPS_ANGLE = 2e-3  # rad: slack for float32 rounding in the angle computations


def bounding_capsules(geom_type: np.ndarray, size: np.ndarray):
  """Static bounding capsule of each geom: (local axis index, half length, radius)."""
  axis = np.full(len(geom_type), 2, np.int32)
  half = np.zeros(len(geom_type), np.float32)
  radius = np.zeros(len(geom_type), np.float32)
  for i, (t, s) in enumerate(zip(geom_type, size)):
    if t == scene_lib.SPHERE:
      radius[i] = s[0]
    elif t in (scene_lib.CAPSULE, scene_lib.CYLINDER):
      half[i], radius[i] = s[1], s[0]
    elif t in (scene_lib.BOX, scene_lib.ELLIPSOID):
      k = int(np.argmax(s[:3]))
      others = [j for j in range(3) if j != k]
      axis[i], half[i], radius[i] = k, s[k], np.hypot(s[others[0]], s[others[1]])
  return axis, half, radius


def tile_cones(dirs: np.ndarray):
  """Static cone of every tile from its pixel rays.

  Args:
    dirs: [3, T, P] camera-frame unit pixel directions (``camera.Tiling.dirs``).
  Returns:
    axis [3, T] unit cone axes; cos, sin [T] of the half-angles plus a rounding slack
    (all float32).
  """
  d = dirs.astype(np.float64)
  c = d.mean(axis=-1)
  c /= np.linalg.norm(c, axis=0, keepdims=True)
  cos = np.clip(np.einsum("it,itp->tp", c, d), -1.0, 1.0)
  alpha = np.arccos(cos).max(axis=-1) + _EPS_ANGLE
  f32 = lambda x: x.astype(np.float32)  # noqa: E731
  return f32(c), f32(np.cos(alpha)), f32(np.sin(alpha))


def visible(cone_axis, cone_cos, cone_sin, centre, axis, half, radius):
  """Tile x geom visibility mask and each geom's nearest possible hit distance.

  Angles are compared through their cosines and sines (no trigonometric functions per
  tile and geom): with theta = alpha + beta + eps, angle(c, v) <= theta iff c.v >= cos(theta),
  and the distance asin|c.n| of c to the arc's great circle is <= theta iff |c.n| <= sin(theta).

  Args:
    cone_axis: [3, T] tile cone axes, camera frame. cone_cos, cone_sin: [T] cos and sin of
      the cone half-angles (+ rounding slack).
    centre: [G, 3] geom centres, camera frame. axis: [G, 3] unit bounding-capsule axes,
      camera frame. half: [G] half lengths. radius: [G] radii.
  Returns:
    mask: [T, G] bool, False only where no ray of the tile can hit the geom.
    near: [G] lower bound of the distance to the geom (0 if the camera is inside its bound).
  """
  a = centre - axis * half[:, None]
  b = centre + axis * half[:, None]
  ab = b - a
  # closest point of the segment to the camera
  s = jnp.clip(-jnp.sum(a * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-20), 0.0, 1.0)
  q = a + ab * s[:, None]
  dist = jnp.sqrt(jnp.sum(q * q, -1))
  inside = dist <= radius * (1.0 + 1e-4) + 1e-6
  sin_b = jnp.clip(radius / jnp.maximum(dist, 1e-20), 0.0, 1.0)
  cos_b = jnp.sqrt(1.0 - sin_b * sin_b)
  ua = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-20)
  ub = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-20)
  n = jnp.cross(ua, ub)
  n_len = jnp.linalg.norm(n, axis=-1)
  arc = n_len > 1e-6  # a real arc, not (nearly) a point
  n = n / jnp.maximum(n_len, 1e-20)[:, None]

  g = lambda v, i: v[:, i][None, :]  # noqa: E731  [1, G]
  cx, cy, cz = (cone_axis[i][:, None] for i in range(3))  # [T, 1]
  # theta = alpha + beta: cos and sin by the angle-sum formulas; theta >= pi/2 <=> cos <= 0
  cos_t = cone_cos[:, None] * cos_b[None, :] - cone_sin[:, None] * sin_b[None, :]
  sin_t = cone_sin[:, None] * cos_b[None, :] + cone_cos[:, None] * sin_b[None, :]
  near_a = cx * g(ua, 0) + cy * g(ua, 1) + cz * g(ua, 2) >= cos_t
  near_b = cx * g(ub, 0) + cy * g(ub, 1) + cz * g(ub, 2) >= cos_t
  # projection p of c onto the arc's great circle; the arc is nearest there if p lies
  # between a and b, i.e. (a x p).n >= 0 and (p x b).n >= 0
  cn = cx * g(n, 0) + cy * g(n, 1) + cz * g(n, 2)
  px, py, pz = cx - cn * g(n, 0), cy - cn * g(n, 1), cz - cn * g(n, 2)
  a_p = ((g(ua, 1) * pz - g(ua, 2) * py) * g(n, 0) + (g(ua, 2) * px - g(ua, 0) * pz) * g(n, 1)
         + (g(ua, 0) * py - g(ua, 1) * px) * g(n, 2))
  p_b = ((py * g(ub, 2) - pz * g(ub, 1)) * g(n, 0) + (pz * g(ub, 0) - px * g(ub, 2)) * g(n, 1)
         + (px * g(ub, 1) - py * g(ub, 0)) * g(n, 2))
  near_arc = arc[None, :] & (a_p >= 0) & (p_b >= 0) & ((jnp.abs(cn) <= sin_t) | (cos_t <= 0))
  mask = near_a | near_b | near_arc | (cos_t <= -1.0 + 1e-6) | inside[None, :]
  near = jnp.where(inside, 0.0, dist - radius)
  return mask, near
