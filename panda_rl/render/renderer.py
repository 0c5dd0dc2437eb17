"""A pure-JAX ray-casting renderer for MJX scenes built from primitive geoms.

No OpenGL, no display, no GPU-only code: ``Renderer.render`` is a pure function of the
kinematic state, so it runs under ``jit``, ``vmap`` (over envs) and inside ``lax.scan``, on CPU
and on accelerators alike. Example::

    renderer = Renderer(mj_model, camera_names=("front", "wrist"), height=64, width=64,
                        outputs=("rgb", "depth", "segmentation"))
    images = jax.jit(jax.vmap(renderer.render))(batched_mjx_data)
    images["front"]["rgb"]  # [B, 64, 64, 3] uint8

Geometry is exactly MuJoCo's: the camera model of ``mjr_render`` (``camera.py``) and the ray
tests of ``mj_ray`` (``raycast.py``), checked pixel by pixel against ``mujoco.mj_ray`` in
``tests/test_render.py``. Shading is MuJoCo-like (headlight and model lights, ambient +
diffuse + specular, no shadows or textures) with normals taken from the depth image.

Cost is pixels x geoms, with these levers for the CPU:

* **One routine per geom type**, vectorised over [tiles, candidates, pixels] with pixels as
  the SIMD axis; geoms are grouped by type at construction. Ray directions are compile-time
  constants in the camera frame; per frame, each geom costs one small change of frame.
* **Packed hits**: a distance's float bits with the geom id in the low bits, so one unsigned
  ``minimum`` per candidate keeps the nearest hit and its geom (``hits.HitCaster.nearest_hit``).
* **Culling from the state** (``culling.py``): each image is cut into an 8 x 8 grid of tiles;
  every frame each geom's bounding capsule is tested against each tile's cone of rays, and a
  type with more than ``max_candidates`` geoms is ray-tested, per tile, only against its
  nearest ``max_candidates`` candidates (geoms behind the camera or outside the tile never
  reach the per-pixel work). If more candidates overlap one tile, the farthest are dropped
  there (``Renderer.overflow`` reports it); ``max_candidates=None`` tests every geom at every
  pixel (exact). The default ("auto") culls from 96 x 96 pixels up, where it pays: on the
  2-core CPU, with the 22-geom Panda scene, it is ~18% faster at 128 x 128 and ~5% slower at
  64 x 64, where the per-tile bookkeeping costs more than the ray tests it saves.
* **Written for XLA:CPU** with the MJX fast-path flags (``panda_rl/_xla.py``): no reductions,
  sorts or gathers inside per-pixel loops, no ``rsqrt``, and ``fusion.materialize`` where an array
  must be computed once (see there): each of these was measured to make XLA emit scalar loops
  or to recompute the ray casting.

Code layout: this module holds the public :class:`Renderer` (arguments, per-camera tables,
the per-camera pipeline); ``hits.py`` the geom tables, culling and packed nearest hits;
``shading.py`` materials, normals and lights; ``fusion.py`` the XLA:CPU numerics helpers.

float32 throughout; depth is exact to 2^-(24 - id bits) relative (6e-6 with the Panda scene's
5 id bits) plus float32 rounding.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from panda_rl.render import camera as camera_lib
from panda_rl.render import culling
from panda_rl.render import hits
from panda_rl.render import raycast
from panda_rl.render import scene as scene_lib
from panda_rl.render import shading
from panda_rl.render.fusion import materialize, materialize_f32

OUTPUTS = ("rgb", "depth", "segmentation")


def _check_arguments(model, outputs, height, width) -> None:
  """Fails early, with a clear message, on arguments the renderer cannot use."""
  if not isinstance(model, mujoco.MjModel):
    raise TypeError("Renderer needs the mujoco.MjModel (an mjx.Model lacks names/materials)")
  unknown = set(outputs) - set(OUTPUTS)
  if unknown or not outputs:
    raise ValueError(f"outputs must be a non-empty subset of {OUTPUTS}, got {outputs}")
  if height < 1 or width < 1:
    raise ValueError(f"image size must be positive, got {height}x{width}")


def _resolve_max_candidates(max_candidates, height: int, width: int):
  """``Renderer``'s max_candidates argument -> None, an int or a dict by type name."""
  if isinstance(max_candidates, str):
    if max_candidates != "auto":
      raise ValueError(f"max_candidates: int, dict, None or 'auto', got {max_candidates!r}")
    max_candidates = 6 if height * width >= 96 * 96 else None
  if max_candidates is None or isinstance(max_candidates, int):
    return max_candidates
  unknown = set(max_candidates) - set(scene_lib.TYPE_NAMES.values())
  if unknown:
    raise ValueError(f"max_candidates: unknown geom types {sorted(unknown)}")
  return {str(k): int(v) for k, v in max_candidates.items()}


class Renderer:
  """Renders RGB / depth / segmentation images of MuJoCo cameras from MJX state.

  The object holds only static numpy constants; ``render`` is pure.

  Args:
    model: the ``mujoco.MjModel`` (read once, here).
    camera_names: MJCF camera names to render.
    height, width: image size in pixels (any size; 64x64 default, 128x128 and larger work).
    outputs: any of "rgb" ([H, W, 3] uint8), "depth" ([H, W] float32: distance from the camera
      along the pixel's *unit* ray, i.e. ``mujoco.mj_ray``'s ``dist`` for a unit-norm ``vec``;
      ``background_depth`` where nothing is hit) and "segmentation" ([H, W] int32 model geom
      id, -1 for background).
    geom_groups: geom groups that are drawn (MuJoCo's viewer default 0, 1, 2); None = all.
      Geoms with alpha 0 are never drawn (as in mj_ray).
    tile_size: (tile height, tile width) in pixels for culling; None: an 8 x 8 grid of tiles
      (8 x 8 pixels at 64 x 64), so that culling behaves the same at every resolution.
    max_candidates: per tile and geom type, how many geoms are ray-tested (nearest first):
      an int, a dict by type name ("capsule", "box", ...; missing types are not culled),
      None (every geom at every pixel, exact) or "auto" (6 from 96 x 96 pixels up, else
      None: see the module doc for the measurements).
    background_rgb: colour of pixels that hit nothing, floats in [0, 1].
    background_depth: depth of pixels that hit nothing (-1 like mj_ray's miss).
    headlight: shade with the model's headlight (``<visual><headlight>``) when it is active.
    model_lights: shade with the model's ``<light>``s (ambient + diffuse + specular,
      attenuation and spot cones; no shadows).
  """

  def __init__(self, model: mujoco.MjModel, camera_names: Sequence[str] = ("front", "wrist"),
               height: int = 64, width: int = 64, outputs: Sequence[str] = ("rgb",),
               geom_groups: Sequence[int] | None = (0, 1, 2),
               tile_size: Tuple[int, int] | None = None,
               max_candidates: int | Mapping[str, int] | str | None = "auto",
               background_rgb: Sequence[float] = (0.0, 0.0, 0.0),
               background_depth: float = -1.0, headlight: bool = True,
               model_lights: bool = True):
    _check_arguments(model, outputs, height, width)
    self.camera_names = tuple(camera_names)
    self.height, self.width = int(height), int(width)
    self.outputs = tuple(outputs)
    self.max_candidates = _resolve_max_candidates(max_candidates, height, width)
    self.background_rgb = np.asarray(background_rgb, np.float32).reshape(3)
    self.background_depth = float(background_depth)

    self.scene = scene = scene_lib.build_scene(model, self.camera_names, geom_groups,
                                               use_model_lights=model_lights,
                                               use_headlight=headlight)
    self._caster = hits.HitCaster.build(scene, model.ngeom, self.max_candidates)
    self._materials = shading.Materials.build(scene, model.ngeom, self.background_rgb)

    th, tw = tile_size if tile_size is not None else (-(-self.height // 8), -(-self.width // 8))
    self._tilings = {
        name: camera_lib.make_tiling(self.height, self.width, cam.fovy, th, tw)
        for name, cam in scene.cameras.items()
    }
    self._cones = {name: culling.tile_cones(t.dirs) for name, t in self._tilings.items()}
    # Static per-pixel data for shading, flat [H * W] in row-major image order.
    self._shading_consts = {
        name: shading.shading_constants(self.height, self.width, scene.cameras[name].fovy)
        for name in self._tilings
    }

  # ------------------------------------------------------------------ public API

  def render(self, data) -> Dict[str, Dict[str, jax.Array]]:
    """Renders every camera for ONE state (``jax.vmap`` it for a batch).

    Args:
      data: an ``mjx.Data`` (or anything with ``geom_xpos`` [ngeom, 3], ``geom_xmat``
        [ngeom, 3, 3] or [ngeom, 9], ``cam_xpos`` [ncam, 3], ``cam_xmat``, and ``xpos`` /
        ``xmat`` when the model has lights) after kinematics and ``camlight`` (``mjx.forward``
        or ``mjx.step``).
    Returns:
      {camera_name: {"rgb": [H, W, 3] uint8, "depth": [H, W] float32,
                     "segmentation": [H, W] int32}} with the requested outputs only.
    """
    geom_pos, geom_mat = self._visible_poses(data)
    cam_xpos = jnp.asarray(data.cam_xpos, jnp.float32)
    cam_xmat = jnp.reshape(jnp.asarray(data.cam_xmat, jnp.float32), (-1, 3, 3))
    lights = self._light_poses(data)
    out = {}
    for name, cam in self.scene.cameras.items():
      out[name] = self._render_camera(name, cam_xpos[cam.cam_id], cam_xmat[cam.cam_id],
                                      geom_pos, geom_mat, lights)
    return out

  def overflow(self, data) -> Dict[str, jax.Array]:
    """Per camera, the largest number of geoms culling had to drop from one tile ([] int32).

    0 means the image is exactly what testing every geom at every pixel would give.
    """
    geom_pos, geom_mat = self._visible_poses(data)
    cam_xpos = jnp.asarray(data.cam_xpos, jnp.float32)
    cam_xmat = jnp.reshape(jnp.asarray(data.cam_xmat, jnp.float32), (-1, 3, 3))
    result = {}
    for name, cam in self.scene.cameras.items():
      worst = jnp.zeros((), jnp.int32)
      o, rc = cam_xpos[cam.cam_id], cam_xmat[cam.cam_id]
      for t, start, stop, k in self._caster.groups:
        if k is not None:
          overlap, _ = self._caster.overlap(self._cones[name], o, rc, start, stop, geom_pos,
                                            geom_mat)
          dropped = jnp.sum(overlap, axis=-1) - k
          worst = jnp.maximum(worst, jnp.max(dropped).astype(jnp.int32))
      result[name] = worst
    return result

  # ------------------------------------------------------------------ internals

  def _visible_poses(self, data):
    """World positions [V, 3] and rotations [V, 3, 3] of the visible geoms (sorted)."""
    ids = self._caster.geom_id
    pos = jnp.asarray(data.geom_xpos, jnp.float32)[ids]
    mat = jnp.reshape(jnp.asarray(data.geom_xmat, jnp.float32), (-1, 3, 3))[ids]
    return pos, mat

  def _light_poses(self, data):
    """World positions [L, 3] and unit directions [L, 3] of the model lights."""
    lights = self.scene.lights
    if lights.count == 0:
      return None
    xpos = jnp.asarray(data.xpos, jnp.float32)[lights.body_id]
    xmat = jnp.reshape(jnp.asarray(data.xmat, jnp.float32), (-1, 3, 3))[lights.body_id]
    pos = xpos + sum(xmat[:, :, j] * lights.pos[:, j, None] for j in range(3))
    direction = sum(xmat[:, :, j] * lights.dir[:, j, None] for j in range(3))
    return pos, direction

  def _render_camera(self, name, o, rc, geom_pos, geom_mat, lights):
    """The requested outputs of one camera at pose (o [3], rc [3, 3])."""
    tiling = self._tilings[name]
    nearest = self._caster.nearest_hit(tiling, self._cones[name], o, rc, geom_pos, geom_mat)
    packed = tiling.untile(nearest)  # [H, W]
    out = {}
    if "depth" in self.outputs or "segmentation" in self.outputs:
      dist, geom, hit = self._caster.unpack(packed)
      out["depth"] = jnp.where(hit, dist, self.background_depth).astype(jnp.float32)
      out["segmentation"] = geom
    if "rgb" in self.outputs:
      out["rgb"] = self._rgb(self._shading_consts[name], o, rc, lights, packed)
    return {k: out[k] for k in self.outputs}

  def _rgb(self, consts, o, rc, lights, packed):
    """Shaded [H, W, 3] uint8 image from the packed hits [H, W]."""
    h, w = self.height, self.width
    # A flat image with a margin of W + 1 pixels on both sides, so that the four neighbours
    # of every pixel are plain slices (masked where they fall off the image).
    # (Materialised: read through the untiling transpose, the loads would not vectorise.)
    margin = w + 1
    pad = jnp.full((margin,), np.float32(raycast.MISS).view(np.uint32), packed.dtype)
    flat = materialize(jnp.concatenate([pad, packed.reshape(h * w), pad]), o)

    def at(offset):
      start = margin + offset
      return self._caster.unpack(jax.lax.slice_in_dim(flat, start, start + h * w))

    dist, geom, hit = centre = at(0)
    normal = shading.depth_normals(consts, centre, {"right": at(1), "left": at(-1),
                                                    "down": at(w), "up": at(-w)})
    colour = shading.shade(consts, self.scene, self._materials, self.background_rgb, o, rc,
                           lights, jnp.where(hit, dist, 0.0), geom, hit, normal)
    # Pack the three 8-bit channels into one exact float (< 2^24) behind a division: the
    # channel interleave below does not vectorise and must not absorb the shading. The
    # [H, W] shape (not [H * W]) keeps XLA from writing the result over one of the shading's
    # own [H * W] temporaries, which makes LLVM fall back to its scalar loop.
    c8 = [jnp.round(jnp.clip(c, 0.0, 1.0) * 255.0) for c in colour]
    word = materialize_f32((c8[0] + 256.0 * c8[1] + 65536.0 * c8[2]).reshape(h, w), o)
    word = word.astype(jnp.int32)
    shifts = jnp.asarray(np.array([0, 8, 16], np.int32))
    return ((word[..., None] >> shifts) & 255).astype(jnp.uint8)
