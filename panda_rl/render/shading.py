"""Shading of the renderer's hit images: materials, normals from depth, lights.

MuJoCo-like (OpenGL fixed-function style): per light, attenuation x spot x (ambient +
diffuse max(n.l, 0)) x colour + specular (n.h)^(128 shininess), plus emission; no shadows
or textures. Normals come from the depth image (:func:`depth_normals`), so the cost does not
grow with the number of geoms. Every per-pixel array here is flat [H * W] in row-major
image order, and written to vectorise on XLA:CPU (select chains instead of gathers,
:func:`~panda_rl.render.fusion.inv_norm` instead of rsqrt).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, NamedTuple, Tuple

import jax.numpy as jnp
import numpy as np

from panda_rl.render import camera as camera_lib
from panda_rl.render import raycast
from panda_rl.render import scene as scene_lib
from panda_rl.render.fusion import inv_norm, power

_TERM_COLUMNS = {"emission": 3, "specular": 4, "shininess": 5}  # columns of the table


@dataclasses.dataclass(frozen=True, eq=False)
class Materials:
  """Colour and material terms per model geom id, for the per-pixel lookup.

  Attributes:
    table: [ngeom + 1, 6] float32 rows (r, g, b, emission, specular, shininess); row
      ``ngeom`` is the background.
    const: the material terms shared by every visible geom (name -> value): constants in
      the shading instead of per-pixel lookups.
    geom_id: [V] model ids of the visible geoms (scene order).
    ngeom: the model's geom count.
  """

  table: np.ndarray
  const: Dict[str, float]
  geom_id: np.ndarray
  ngeom: int

  @classmethod
  def build(cls, scene: scene_lib.Scene, ngeom: int, background_rgb: np.ndarray) -> "Materials":
    table = np.zeros((ngeom + 1, 6), np.float32)
    table[scene.geom_id, 0:3] = scene.rgb
    table[scene.geom_id, 3] = scene.emission
    table[scene.geom_id, 4] = scene.specular
    table[scene.geom_id, 5] = scene.shininess
    table[ngeom, 0:3] = background_rgb
    const = {}
    for name, col in _TERM_COLUMNS.items():
      values = table[scene.geom_id, col]
      if values.size == 0 or np.all(values == values[0]):
        const[name] = float(values[0]) if values.size else 0.0
    return cls(table=table, const=const, geom_id=scene.geom_id, ngeom=int(ngeom))

  def lookup(self, geom):
    """Per-pixel colour and material terms by select chains over the visible geoms.

    (A gather here would be fused into the shading loop and stop its vectorisation.)
    Geoms sharing a material share one select.

    Args:
      geom: [H * W] int32 model geom id per pixel (-1 or anything else: background).
    Returns:
      (base (r, g, b), {name: term}); terms are floats where :attr:`const` has them.
    """
    cols = _TERM_COLUMNS
    varying = [n for n in cols if n not in self.const]
    keys = {}  # material row -> geom ids that use it
    for g in self.geom_id:
      row = tuple(float(v) for v in self.table[g, [0, 1, 2] + [cols[n] for n in varying]])
      keys.setdefault(row, []).append(int(g))
    bg = self.table[self.ngeom]
    values = [jnp.full(geom.shape, float(bg[c]), jnp.float32)
              for c in [0, 1, 2] + [cols[n] for n in varying]]
    for row, ids in keys.items():
      sel = functools.reduce(jnp.logical_or, [geom == g for g in ids])
      values = [jnp.where(sel, v, x) for v, x in zip(row, values)]
    term = {n: (self.const[n] if n in self.const
                else values[3 + varying.index(n)]) for n in cols}
    return values[:3], term


def shading_constants(height, width, fovy):
  """Static flat [H * W] per-pixel arrays for :func:`depth_normals` and the lighting."""
  x, y = camera_lib.pixel_tangents(height, width, fovy)
  qnorm = np.sqrt(x * x + y * y + 1.0)
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  f32 = lambda a: np.ascontiguousarray(a, np.float32).reshape(-1)  # noqa: E731
  inv_q = f32(1.0 / qnorm)
  margin = width + 1
  inv_q_pad = np.concatenate([np.ones(margin, np.float32), inv_q, np.ones(margin, np.float32)])
  n = height * width
  shifted = lambda k: inv_q_pad[margin + k:margin + k + n]  # noqa: E731
  return {
      "ux": f32(x / qnorm), "uy": f32(y / qnorm), "uz": f32(-1.0 / qnorm),
      "tx": f32(x), "ty": f32(y), "inv_qnorm": inv_q,
      # tangent-coordinate step between neighbouring pixels (square pixels)
      "step": float(2.0 * np.tan(np.deg2rad(fovy) / 2.0) / height),
      "has": {"right": (cols < width - 1).reshape(-1), "left": (cols > 0).reshape(-1),
              "down": (rows < height - 1).reshape(-1), "up": (rows > 0).reshape(-1)},
      "inv_qnorm_at": {"right": shifted(1), "left": shifted(-1), "down": shifted(width),
                       "up": shifted(-width)},
  }


def depth_normals(consts, centre, neighbours):
  """Camera-frame unit surface normals from the depth image, facing the camera.

  With z the depth along the camera axis and q = (x, y, -1) a pixel's tangent ray, the
  surface point is P = z q. Its derivatives along image columns and rows are
  z_c q + z (s, 0, 0) and z_r q - z (0, s, 0) (s: the pixel step), whose cross product is,
  up to a positive factor, n = (z_c, -z_r, x z_c - y z_r + s z): it always faces the camera.
  z_c and z_r are one-sided differences with a neighbour that hit the same geom (the one
  with the smaller step when both did, so pixels next to creases and silhouettes use their
  own side; zero when neither did). Exact on planes and box faces, a chord normal on curved
  surfaces; it needs no per-geom data, so its cost does not grow with the number of geoms.

  Args:
    consts: :func:`shading_constants` of the camera.
    centre: (dist, geom, hit) of every pixel, flat [H * W].
    neighbours: the same for the "right", "left", "down" and "up" neighbour of each pixel.
  Returns:
    (nx, ny, nz), flat [H * W] unit vectors.
  """
  dist, geom, hit = centre
  z = dist * consts["inv_qnorm"]

  def derivative(a, b):  # toward neighbour a (+1 pixel) or from neighbour b (-1 pixel)
    (da, ga, ha), (db, gb, hb) = neighbours[a], neighbours[b]
    ok_a = hit & ha & (ga == geom) & consts["has"][a]
    ok_b = hit & hb & (gb == geom) & consts["has"][b]
    fwd = da * consts["inv_qnorm_at"][a] - z
    bwd = z - db * consts["inv_qnorm_at"][b]
    use_a = ok_a & (~ok_b | (jnp.abs(fwd) <= jnp.abs(bwd)))
    return jnp.where(use_a, fwd, jnp.where(ok_b, bwd, 0.0))

  z_c = derivative("right", "left")
  z_r = derivative("down", "up")
  nx, ny = z_c, -z_r
  nz = consts["tx"] * z_c - consts["ty"] * z_r + consts["step"] * z
  inv = inv_norm(nx * nx + ny * ny + nz * nz)
  return nx * inv, ny * inv, nz * inv


class _Surface(NamedTuple):
  """What every light's contribution reads about the shaded pixels (flat [H * W])."""
  normal: Tuple  # (nx, ny, nz) camera-frame unit normals
  view: Tuple  # (vx, vy, vz) unit vectors toward the camera
  base: list  # (r, g, b) base colour
  spec_mat: object  # material specular (float or array)
  shininess: object  # specular exponent, 128 * shininess (float or array)
  has_spec_mat: bool  # some geom has a non-zero specular term


def _add_light(colour, s: _Surface, to_light, amb, diff, spec, scale):
  """Adds one light's (ambient + diffuse + specular) x ``scale`` to ``colour`` in place."""
  n = s.normal
  ndl = n[0] * to_light[0] + n[1] * to_light[1] + n[2] * to_light[2]
  diffuse = jnp.maximum(ndl, 0.0)
  lit = [(float(amb[i]) + float(diff[i]) * diffuse) * s.base[i] for i in range(3)]
  if s.has_spec_mat and np.any(np.asarray(spec) > 0):
    hv = [to_light[i] + s.view[i] for i in range(3)]
    hinv = inv_norm(hv[0] * hv[0] + hv[1] * hv[1] + hv[2] * hv[2])
    ndh = jnp.maximum((n[0] * hv[0] + n[1] * hv[1] + n[2] * hv[2]) * hinv, 1e-30)
    specular = jnp.where(ndl > 0, power(ndh, s.shininess), 0.0) * s.spec_mat
    lit = [lit[i] + float(spec[i]) * specular for i in range(3)]
  for i in range(3):
    colour[i] = colour[i] + (lit[i] if scale is None else scale * lit[i])


def _model_light(ls: scene_lib.LightSpec, i, lpos, ldir, point, like):
  """(unit vectors toward light i [3 x H * W], attenuation x spot factor or None).

  Args:
    ls: the scene's lights. lpos, ldir: [L, 3] camera-frame light positions / directions.
    point: (x, y, z) camera-frame hit points. like: any [H * W] array (for broadcasting).
  """
  if ls.kind[i] == 1:  # directional
    return tuple(-ldir[i, j] + jnp.zeros_like(like) for j in range(3)), None
  vec = [lpos[i, j] - point[j] for j in range(3)]
  dist2 = jnp.maximum(vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2], 1e-30)
  inv_l = inv_norm(dist2)
  to_light = tuple(v * inv_l for v in vec)
  a = ls.attenuation[i]
  scale = 1.0 / (float(a[0]) + float(a[1]) * dist2 * inv_l + float(a[2]) * dist2)
  if ls.kind[i] == 0:  # spot cone
    cos_ang = -(to_light[0] * ldir[i, 0] + to_light[1] * ldir[i, 1]
                + to_light[2] * ldir[i, 2])
    cone = jnp.where(cos_ang >= float(ls.cutoff_cos[i]),
                     jnp.exp(float(ls.exponent[i])
                             * jnp.log(jnp.maximum(cos_ang, 1e-30))), 0.0)
    scale = scale * cone
  return to_light, scale


def shade(consts, scene: scene_lib.Scene, materials: Materials, background_rgb, o, rc,
          lights, dist, geom, hit, n):
  """Emission + ambient + diffuse + specular shading of the hit points: (r, g, b).

  Args:
    consts: :func:`shading_constants` of the camera. scene: the static scene (headlight,
      lights). materials: the :class:`Materials`. background_rgb: [3] miss colour.
    o: [3] camera position. rc: [3, 3] camera rotation.
    lights: (world positions [L, 3], world directions [L, 3]) of the model lights, or None.
    dist: [H * W] hit distance (0 where nothing is hit). geom: [H * W] geom id.
    hit: [H * W] bool. n: camera-frame unit normals (3 x [H * W]).
  Returns:
    (r, g, b), flat [H * W] float32 in [0, inf) (clipped by the caller).
  """
  ux, uy, uz = consts["ux"], consts["uy"], consts["uz"]
  base, term = materials.lookup(geom)
  spec_mat, shininess = term["specular"], term["shininess"] * 128.0
  has_spec_mat = not (isinstance(spec_mat, float) and spec_mat == 0.0)
  surface = _Surface(normal=n, view=(-ux, -uy, -uz), base=base, spec_mat=spec_mat,
                     shininess=shininess, has_spec_mat=has_spec_mat)
  colour = [term["emission"] * c for c in base]

  if scene.headlight is not None:
    amb, diff, spec = scene.headlight
    zero = jnp.zeros_like(ux)
    _add_light(colour, surface, (zero, zero, zero + 1.0), amb, diff, spec, None)  # view axis
  if lights is not None:
    ls = scene.lights
    lpos = raycast.to_camera(rc, lights[0] - o[None, :])  # [L, 3] camera frame
    ldir = raycast.to_camera(rc, lights[1])
    point = (dist * ux, dist * uy, dist * uz)  # hit points, camera frame
    for i in range(ls.count):
      to_light, scale = _model_light(ls, i, lpos, ldir, point, ux)
      _add_light(colour, surface, to_light, ls.ambient[i], ls.diffuse[i], ls.specular[i], scale)
  bg = background_rgb
  return tuple(jnp.where(hit, colour[i], float(bg[i])) for i in range(3))
