"""Ray-primitive intersection, one specialised routine per geom type, in structure-of-arrays form.

Semantics follow MuJoCo's C ray caster (``engine_ray.c``, ``mju_rayGeom``) geom type by geom
type: the returned ``t`` is the ray parameter of the nearest intersection with ``t >= 0`` (a
distance, because every ray direction here is a unit vector), planes are one-sided (hit only
from their +z side) and clipped to ``size[0:2]`` when those are positive, and a ray starting
inside a solid returns its exit point. Misses are ``MISS`` (1e30; mj_ray says -1).

All rays of a camera share one origin, so everything that depends only on (camera, geom) is
computed once per geom by ``*_params`` (a [G, F] table, F columns per type) and the per-ray work
is the arithmetic in ``*_hit``. The hit routines take the columns of that table as a tuple of
arrays broadcastable against the ray directions ``u = (ux, uy, uz)``, which are *camera-frame*
unit vectors (compile-time constants): boxes, cylinders, ellipsoids and planes use the
geom-local direction ``M u`` with ``M = R_geom^T R_cam`` (9 FMAs), spheres and capsules work in
the camera frame directly; no per-ray world-frame transform is ever formed. Shapes are free: the renderer uses geoms
[T, K, 1] against rays [T, 1, P] (tiles x candidates x pixels).

Written for XLA:CPU's fusion pass: divisions are reciprocals ``1 / x`` times a product, never
``x / y`` of two per-ray arrays. XLA refuses to duplicate an expensive binary op with several
users into one fused loop, so such a division splits the routine into several kernels that
write [T, K, P] temporaries to memory (measured: 2x slower); a unary reciprocal fuses.
"""

from __future__ import annotations

import jax.numpy as jnp

from panda_rl.render import scene as scene_lib

# Distance reported for "no hit": finite, so that it can carry a packed geom id (renderer).
MISS = 1e30


def local_frame(o, rc, pos, mat):
  """Camera-to-geom rotation and the camera origin in each geom's frame.

  Written as explicit 3-term sums (no dot ops: tiny dots are slow on XLA:CPU).

  Args:
    o: [3] camera position (world). rc: [3, 3] camera rotation (columns = camera axes).
    pos: [G, 3] geom positions. mat: [G, 3, 3] geom rotations (columns = geom axes).
  Returns:
    m: [G, 3, 3] with ``m @ u_cam = u_local``. lo: [G, 3] camera origin in geom frames.
  """
  w = o[None, :] - pos
  m = sum(mat[:, k, :, None] * rc[None, k, None, :] for k in range(3))
  lo = sum(mat[:, k, :] * w[:, k, None] for k in range(3))
  return m, lo


def to_camera(rc, v):
  """World vectors [..., 3] -> camera frame (R_cam^T v), no dot ops."""
  return sum(v[..., k, None] * rc[k] for k in range(3))


def _local_dir(c, ux, uy, uz):
  """Geom-local ray direction from the first 9 columns (M row-major)."""
  dx = c[0] * ux + c[1] * uy + c[2] * uz
  dy = c[3] * ux + c[4] * uy + c[5] * uz
  dz = c[6] * ux + c[7] * uy + c[8] * uz
  return dx, dy, dz


def _quad_root(b, det):
  """mj_ray's ``ray_quad`` for a = 1: the smaller root if >= 0, else the larger one.

  Returns (root, ok) with ``ok`` False when there is no real root or both are negative.
  """
  sq = jnp.sqrt(jnp.maximum(det, 0.0))
  x0 = -b - sq
  x = jnp.where(x0 >= 0, x0, -b + sq)
  return x, (det > 0) & (x >= 0)


# ---------------------------------------------------------------- sphere (camera frame)

def sphere_params(o, rc, pos, mat, size):
  """[G, 4]: w = R_cam^T (o - pos) and c = |w|^2 - r^2."""
  del mat
  w = to_camera(rc, o[None, :] - pos)
  c = jnp.sum(w * w, axis=-1) - size[:, 0] ** 2
  return jnp.concatenate([w, c[:, None]], axis=-1)


def sphere_hit(c, ux, uy, uz):
  b = ux * c[0] + uy * c[1] + uz * c[2]
  x, ok = _quad_root(b, b * b - c[3])
  return jnp.where(ok, x, MISS)


# ---------------------------------------------------------------- capsule
# A "segment pa-pb of half length h, radius r" shape, intersected in the camera frame
# (no per-ray change of frame: two dot products per ray) with the classic swept-segment
# formulation: the ray meets the infinite cylinder around the axis at the root t of
# a t^2 + 2 b t + c = 0 (scaled by |ba|^2); if that point's axial coordinate y lies between the
# ends it is the hit, otherwise the ray can only enter through the end ball on that side.
# ``sign`` = +1 takes entry roots (camera outside the solid), -1 exit roots (camera inside:
# mj_ray returns the exit point).

def _segment_frame(o, rc, pos, mat, h):
  """Camera-frame segment vector ba = pb - pa and camera origin oa = o - pa, [G, 3] each."""
  axis = mat[:, :, 2]  # geom z axis, world
  pa = pos - axis * h[:, None]
  ba = to_camera(rc, axis * (2.0 * h)[:, None])
  oa = to_camera(rc, o[None, :] - pa)
  return ba, oa


def capsule_params(o, rc, pos, mat, size):
  """[G, 11]: ba (3), oa (3), |ba|^2, ba.oa, c, |oa|^2 - r^2, |ob|^2 - r^2 ... and sign."""
  r, h = size[:, 0], size[:, 1]
  ba, oa = _segment_frame(o, rc, pos, mat, h)
  baba = 4.0 * h * h
  baoa = jnp.sum(ba * oa, -1)
  oaoa = jnp.sum(oa * oa, -1)
  ob = oa - ba
  c = baba * oaoa - baoa * baoa - r * r * baba
  # inside: distance from the camera to the axis segment below r
  y = jnp.clip(baoa / baba, 0.0, 1.0)
  near = oa - ba * y[:, None]
  sign = jnp.where(jnp.sum(near * near, -1) < r * r, -1.0, 1.0)
  cols = [baba, baoa, c, oaoa - r * r, jnp.sum(ob * ob, -1) - r * r, sign]
  return jnp.concatenate([ba, oa] + [x[:, None] for x in cols], axis=-1)


def capsule_hit(c, ux, uy, uz):
  """Ray vs capsule (equal to mj_ray's ``ray_capsule``): 2 sqrt, 1 division per ray."""
  baba, baoa, cc, ca, cb, sign = c[6:12]
  bard = c[0] * ux + c[1] * uy + c[2] * uz
  rdoa = c[3] * ux + c[4] * uy + c[5] * uz
  a = baba - bard * bard
  b = baba * rdoa - baoa * bard
  det = b * b - a * cc
  t = (-b - sign * jnp.sqrt(jnp.maximum(det, 0.0))) * (1.0 / a)  # (a reciprocal: see module doc)
  y = baoa + t * bard
  body = (t >= 0) & (y >= 0) & (y <= baba)
  # end balls: pa's when y < 0, pb's otherwise; b' = u.(o - centre)
  low = y < 0
  b2 = jnp.where(low, rdoa, rdoa - bard)
  det2 = b2 * b2 - jnp.where(low, ca, cb)
  t2 = -b2 - sign * jnp.sqrt(jnp.maximum(det2, 0.0))
  t = jnp.where(body, t, jnp.where((det2 > 0) & (t2 >= 0), t2, MISS))
  return jnp.where(det > 0, t, MISS)


def cylinder_params(o, rc, pos, mat, size):
  """[G, 15]: M (9), lo (3), r^2, h, c_side (|lo_xy|^2 - r^2); geom-local frame."""
  m, lo = local_frame(o, rc, pos, mat)
  r2, h = size[:, 0] ** 2, size[:, 1]
  c_side = lo[:, 0] ** 2 + lo[:, 1] ** 2 - r2
  return jnp.concatenate([m.reshape(-1, 9), lo, r2[:, None], h[:, None], c_side[:, None]],
                         axis=-1)


def cylinder_hit(c, ux, uy, uz):
  """Ray vs cylinder, as mj_ray's ``ray_cylinder``: the flat ends (within the radius) and the
  round side (between the ends), nearest non-negative root of each (2 reciprocals, 1 sqrt)."""
  dx, dy, dz = _local_dir(c, ux, uy, uz)
  ox, oy, oz = c[9], c[10], c[11]
  r2, h, c_side = c[12], c[13], c[14]
  inv_dz = 1.0 / dz
  best = MISS
  for zc in (h, -h):
    x = (zc - oz) * inv_dz
    px, py = ox + x * dx, oy + x * dy
    ok = (x >= 0) & (px * px + py * py <= r2)
    best = jnp.minimum(best, jnp.where(ok, x, MISS))
  a = dx * dx + dy * dy
  bxy = dx * ox + dy * oy
  det = bxy * bxy - a * c_side
  sq = jnp.sqrt(jnp.maximum(det, 0.0))
  inv_a = 1.0 / a
  x0 = (-bxy - sq) * inv_a
  side = jnp.where(x0 >= 0, x0, (-bxy + sq) * inv_a)
  ok = (det > 0) & (side >= 0) & (jnp.abs(oz + side * dz) <= h)
  return jnp.minimum(best, jnp.where(ok, side, MISS))


# ---------------------------------------------------------------- box

def box_params(o, rc, pos, mat, size):
  """[G, 15]: M (9), -size - lo (3), size - lo (3) (slab offsets)."""
  m, lo = local_frame(o, rc, pos, mat)
  return jnp.concatenate([m.reshape(-1, 9), -size - lo, size - lo], axis=-1)


def box_hit(c, ux, uy, uz):
  d = _local_dir(c, ux, uy, uz)
  tmin, tmax = -MISS, MISS
  for i in range(3):
    inv = 1.0 / d[i]
    t1, t2 = c[9 + i] * inv, c[12 + i] * inv
    tmin = jnp.maximum(tmin, jnp.minimum(t1, t2))
    tmax = jnp.minimum(tmax, jnp.maximum(t1, t2))
  ok = (tmin <= tmax) & (tmax >= 0)
  return jnp.where(ok, jnp.where(tmin >= 0, tmin, tmax), MISS)


# ---------------------------------------------------------------- ellipsoid

def ellipsoid_params(o, rc, pos, mat, size):
  """[G, 13]: M / size (rows scaled, 9), lo / size (3), |lo / size|^2 - 1."""
  m, lo = local_frame(o, rc, pos, mat)
  m = m / size[:, :, None]
  lo = lo / size
  c = jnp.sum(lo * lo, axis=-1) - 1.0
  return jnp.concatenate([m.reshape(-1, 9), lo, c[:, None]], axis=-1)


def ellipsoid_hit(c, ux, uy, uz):
  dx, dy, dz = _local_dir(c, ux, uy, uz)
  a = dx * dx + dy * dy + dz * dz
  b = dx * c[9] + dy * c[10] + dz * c[11]
  det = b * b - a * c[12]
  sq = jnp.sqrt(jnp.maximum(det, 0.0))
  inv_a = 1.0 / a
  x0 = (-b - sq) * inv_a
  x = jnp.where(x0 >= 0, x0, (-b + sq) * inv_a)
  return jnp.where((det > 0) & (x >= 0), x, MISS)


# ---------------------------------------------------------------- plane

def plane_params(o, rc, pos, mat, size):
  """[G, 14]: M (9), lo (3), half sizes x, y (inf where size <= 0: unbounded)."""
  m, lo = local_frame(o, rc, pos, mat)
  sx = jnp.where(size[:, 0] > 0, size[:, 0], MISS)
  sy = jnp.where(size[:, 1] > 0, size[:, 1], MISS)
  return jnp.concatenate([m.reshape(-1, 9), lo, sx[:, None], sy[:, None]], axis=-1)


def plane_hit(c, ux, uy, uz, bounded: bool = True):
  dz = c[6] * ux + c[7] * uy + c[8] * uz
  x = -c[11] / dz
  ok = (dz < -1e-15) & (x >= 0)
  if bounded:
    dx = c[0] * ux + c[1] * uy + c[2] * uz
    dy = c[3] * ux + c[4] * uy + c[5] * uz
    ok &= (jnp.abs(c[9] + x * dx) <= c[12]) & (jnp.abs(c[10] + x * dy) <= c[13])
  return jnp.where(ok, x, MISS)


PARAMS = {
    scene_lib.PLANE: plane_params,
    scene_lib.SPHERE: sphere_params,
    scene_lib.CAPSULE: capsule_params,
    scene_lib.ELLIPSOID: ellipsoid_params,
    scene_lib.CYLINDER: cylinder_params,
    scene_lib.BOX: box_params,
}
HIT = {
    scene_lib.PLANE: plane_hit,
    scene_lib.SPHERE: sphere_hit,
    scene_lib.CAPSULE: capsule_hit,
    scene_lib.ELLIPSOID: ellipsoid_hit,
    scene_lib.CYLINDER: cylinder_hit,
    scene_lib.BOX: box_hit,
}
