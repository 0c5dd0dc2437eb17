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
  ``minimum`` per candidate keeps the nearest hit and its geom (``_nearest_hit``).
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
  sorts or gathers inside per-pixel loops, no ``rsqrt``, and ``_materialize`` where an array
  must be computed once (see there): each of these was measured to make XLA emit scalar loops
  or to recompute the ray casting.

float32 throughout; depth is exact to 2^-(24 - id bits) relative (6e-6 with the Panda scene's
5 id bits) plus float32 rounding.
"""

from __future__ import annotations

import functools
from typing import Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from panda_rl.render import camera as camera_lib
from panda_rl.render import culling
from panda_rl.render import raycast
from panda_rl.render import scene as scene_lib

OUTPUTS = ("rgb", "depth", "segmentation")
# Order in which geom types are intersected (cheap, large ones first).
_TYPE_ORDER = (scene_lib.PLANE, scene_lib.BOX, scene_lib.SPHERE, scene_lib.CAPSULE,
               scene_lib.CYLINDER, scene_lib.ELLIPSOID)
# Where the never-hit "dummy" candidate sits: this far behind the camera (camera +z).
_DUMMY_BEHIND = 100.0


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
    if not isinstance(model, mujoco.MjModel):
      raise TypeError("Renderer needs the mujoco.MjModel (an mjx.Model lacks names/materials)")
    unknown = set(outputs) - set(OUTPUTS)
    if unknown or not outputs:
      raise ValueError(f"outputs must be a non-empty subset of {OUTPUTS}, got {outputs}")
    if height < 1 or width < 1:
      raise ValueError(f"image size must be positive, got {height}x{width}")
    self.camera_names = tuple(camera_names)
    self.height, self.width = int(height), int(width)
    self.outputs = tuple(outputs)
    if isinstance(max_candidates, str):
      if max_candidates != "auto":
        raise ValueError(f"max_candidates: int, dict, None or 'auto', got {max_candidates!r}")
      max_candidates = 6 if height * width >= 96 * 96 else None
    if max_candidates is None or isinstance(max_candidates, int):
      self.max_candidates = max_candidates
    else:
      unknown = set(max_candidates) - set(scene_lib.TYPE_NAMES.values())
      if unknown:
        raise ValueError(f"max_candidates: unknown geom types {sorted(unknown)}")
      self.max_candidates = {str(k): int(v) for k, v in max_candidates.items()}
    self.background_rgb = np.asarray(background_rgb, np.float32).reshape(3)
    self.background_depth = float(background_depth)

    scene = scene_lib.build_scene(model, self.camera_names, geom_groups,
                                  use_model_lights=model_lights, use_headlight=headlight)
    # Visible geoms sorted by type, so that each type is one contiguous slice.
    order = np.argsort(
        [_TYPE_ORDER.index(t) for t in scene.geom_type], kind="stable").astype(np.int32)
    self.scene = scene
    self._geom_id = scene.geom_id[order]  # [V] model geom id, sorted by type
    self._type = scene.geom_type[order]
    self._size = scene.size[order]
    self._bound = culling.bounding_capsules(self._type, self._size)  # (axis, half, radius)
    groups = []
    for t in _TYPE_ORDER:
      sl = np.nonzero(self._type == t)[0]
      if sl.size:
        k = self._cap(t)
        # culling a type with no more geoms than candidate slots would save no work
        groups.append((t, int(sl[0]), int(sl[-1]) + 1, k if k is not None and k < sl.size
                       else None))
    # (type, start, stop, k): visible geoms [start, stop) are of this type; k candidates per
    # tile are ray-tested (None: every geom at every pixel)
    self._groups = tuple(groups)
    self._planes_bounded = bool(np.any(self._size[self._type == scene_lib.PLANE][:, :2] > 0))

    # Hits are packed as (distance bits | model geom id): see _nearest_hit.
    self._id_bits = max(1, int(np.ceil(np.log2(max(model.ngeom, 2)))))
    self._ngeom = int(model.ngeom)
    # Material per model geom id (row ngeom = background), for the colour lookup.
    material = np.zeros((model.ngeom + 1, 6), np.float32)
    material[scene.geom_id, 0:3] = scene.rgb
    material[scene.geom_id, 3] = scene.emission
    material[scene.geom_id, 4] = scene.specular
    material[scene.geom_id, 5] = scene.shininess
    material[model.ngeom, 0:3] = self.background_rgb
    # Material terms shared by every visible geom become constants (no per-pixel lookup).
    self._material_const = {}
    for col, name in ((3, "emission"), (4, "specular"), (5, "shininess")):
      values = material[scene.geom_id, col]
      if values.size == 0 or np.all(values == values[0]):
        self._material_const[name] = float(values[0]) if values.size else 0.0
    self._material = material

    th, tw = tile_size if tile_size is not None else (-(-self.height // 8), -(-self.width // 8))
    self._tilings = {
        name: camera_lib.make_tiling(self.height, self.width, cam.fovy, th, tw)
        for name, cam in scene.cameras.items()
    }
    self._cones = {name: culling.tile_cones(t.dirs) for name, t in self._tilings.items()}
    # Static per-pixel data for shading, flat [H * W] in row-major image order.
    self._shading_consts = {
        name: _shading_constants(self.height, self.width, scene.cameras[name].fovy)
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
      for t, start, stop, k in self._groups:
        if k is not None:
          overlap, _ = self._overlap(name, o, rc, start, stop, geom_pos, geom_mat)
          dropped = jnp.sum(overlap, axis=-1) - k
          worst = jnp.maximum(worst, jnp.max(dropped).astype(jnp.int32))
      result[name] = worst
    return result

  # ------------------------------------------------------------------ internals

  def _visible_poses(self, data):
    ids = self._geom_id
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

  def _overlap(self, name, o, rc, start, stop, geom_pos, geom_mat):
    """[T, G] which geoms [start, stop) a tile's rays may hit, and [G] nearest distances."""
    axis, half, radius = (x[start:stop] for x in self._bound)
    pos, mat = geom_pos[start:stop], geom_mat[start:stop]
    onehot = jnp.asarray(np.eye(3, dtype=np.float32)[axis])  # [G, 3] bounding axis index
    world_axis = jnp.sum(mat * onehot[:, None, :], axis=-1)  # [G, 3] that column of mat
    cone_axis, cone_cos, cone_sin = self._cones[name]
    return culling.visible(cone_axis, cone_cos, cone_sin, raycast.to_camera(rc, pos - o[None, :]),
                           raycast.to_camera(rc, world_axis), jnp.asarray(half),
                           jnp.asarray(radius))

  def _cap(self, geom_type):
    """Candidates per tile for a geom type (None: no culling)."""
    if geom_type == scene_lib.PLANE or self.max_candidates is None:
      return None
    if isinstance(self.max_candidates, int):
      return self.max_candidates
    return self.max_candidates.get(scene_lib.TYPE_NAMES[geom_type])

  def _candidates(self, name, o, rc, start, stop, geom_pos, geom_mat, k):
    """[T, k] indices into the type group (G = the never-hit dummy) of the nearest overlaps.

    Ranks by pairwise comparison over the group's few geoms, unrolled into elementwise ops:
    on XLA:CPU (with the MJX fast-path flags) both ``lax.top_k``'s sort and reductions cost
    far more than the [T, G] x G compares.
    """
    overlap, near = self._overlap(name, o, rc, start, stop, geom_pos, geom_mat)
    g = stop - start
    # (materialised twice: each stage reads its input many times, and XLA would otherwise
    # recompute the culling test inside every read)
    key = _materialize_f32(jnp.where(overlap, near[None, :], 3e38), o)  # [T, G], near first
    rank = jnp.zeros(key.shape, jnp.float32)  # number of nearer geoms (ties: lower index)
    for j in range(g):
      kj = key[:, j:j + 1]
      ahead = (kj < key) | ((kj == key) & (np.arange(g) > j)[None, :])
      rank = rank + ahead.astype(jnp.float32)
    rank = _materialize_f32(jnp.where(key < 1e38, rank, float(k)), o)  # k: not a candidate
    # slot s takes the geom of rank s (the broadcast over slots is what keeps XLA from
    # fusing, and so recomputing, the ranking into this selection)
    match = rank[:, None, :] == np.arange(k, dtype=np.float32)[None, :, None]  # [T, k, G]
    idx = jnp.full(match.shape[:2], g, jnp.int32)  # the dummy unless some geom has the rank
    for j in range(g):
      idx = jnp.where(match[:, :, j], j, idx)
    return idx

  def _nearest_hit(self, name, o, rc, geom_pos, geom_mat):
    """Nearest hit of every pixel ray, packed: [T, P] uint32 (see ``_unpack``).

    A hit distance t >= 0 is a non-negative float32, whose bit pattern orders like the float;
    its low ``self._id_bits`` bits are replaced by the hit geom's model id, so one unsigned
    ``minimum`` per candidate keeps both the nearest distance and its geom, with no select
    chains, no reductions and no gathers in the per-pixel loop (on XLA:CPU with the MJX
    fast-path flags, reductions run scalar and a fused gather stops vectorisation).
    """
    tiling = self._tilings[name]
    ux, uy, uz = (jnp.asarray(c)[:, None, :] for c in tiling.dirs)  # [T, 1, P]
    clear = np.uint32(~((1 << self._id_bits) - 1) & 0xFFFFFFFF)
    best = None
    for t, start, stop, k in self._groups:
      pos, mat = geom_pos[start:stop], geom_mat[start:stop]
      size = jnp.asarray(self._size[start:stop])
      gids = self._geom_id[start:stop].astype(np.uint32)
      if k is not None:
        cand = self._candidates(name, o, rc, start, stop, geom_pos, geom_mat, k)  # [T, k]
        # append the dummy: a geom of this type far behind the camera, never hit
        dummy_pos = o + rc[:, 2] * _DUMMY_BEHIND
        pos = jnp.concatenate([pos, dummy_pos[None]], 0)
        mat = jnp.concatenate([mat, rc[None]], 0)
        size = jnp.concatenate([size, size[:1]], 0)
        # (both materialised: the table is computed once, not per gathered element, and a
        # gather fused into the per-pixel loop would stop its vectorisation)
        table = _materialize_f32(raycast.PARAMS[t](o, rc, pos, mat, size), o)  # [G + 1, F]
        cols = _materialize_f32(jnp.take(table, cand, axis=0, mode="clip"), o)  # [T, K, F]
        cols = tuple(cols[..., f:f + 1] for f in range(table.shape[1]))  # [T, K, 1] each
        slot_ids = jnp.take(jnp.asarray(np.append(gids, gids[:1])), cand, mode="clip")
      else:
        table = raycast.PARAMS[t](o, rc, pos, mat, size)  # [G, F]
        cols = tuple(table[None, :, f:f + 1] for f in range(table.shape[1]))  # [1, G, 1]
        slot_ids = jnp.asarray(gids)[None, :]  # [1, G]
      if t == scene_lib.PLANE:
        dist = raycast.plane_hit(cols, ux, uy, uz, bounded=self._planes_bounded)
      else:
        dist = raycast.HIT[t](cols, ux, uy, uz)  # [T, K, P]
      bits = jax.lax.bitcast_convert_type(dist, jnp.uint32)
      packed = (bits & clear) | slot_ids[:, :, None]
      for k in range(packed.shape[1]):
        best = packed[:, k, :] if best is None else jnp.minimum(best, packed[:, k, :])
    if best is None:  # nothing visible at all
      best = jnp.full((tiling.num_tiles, tiling.pixels_per_tile),
                      jax.lax.bitcast_convert_type(jnp.float32(raycast.MISS), jnp.uint32))
    return _materialize(best, o)

  def _unpack(self, packed):
    """packed uint32 -> (distance float32, model geom id int32 or -1, hit bool), same shape.

    The id bits replaced the distance's lowest mantissa bits; setting the top one of them
    returns the middle of the truncated range, so the depth error is at most
    2^-(24 - id_bits) relative (6e-6 m at 1 m with 5 id bits), plus float32 rounding.
    """
    mask = np.uint32((1 << self._id_bits) - 1)
    half = np.uint32(1 << (self._id_bits - 1))
    dist = jax.lax.bitcast_convert_type((packed & ~mask) | half, jnp.float32)
    hit = dist < 0.5 * raycast.MISS
    geom = jnp.where(hit, (packed & mask).astype(jnp.int32), -1)
    return dist, geom, hit

  def _render_camera(self, name, o, rc, geom_pos, geom_mat, lights):
    tiling = self._tilings[name]
    packed = tiling.untile(self._nearest_hit(name, o, rc, geom_pos, geom_mat))  # [H, W]
    out = {}
    if "depth" in self.outputs or "segmentation" in self.outputs:
      dist, geom, hit = self._unpack(packed)
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
    flat = _materialize(jnp.concatenate([pad, packed.reshape(h * w), pad]), o)

    def at(offset):
      return self._unpack(jax.lax.slice_in_dim(flat, margin + offset, margin + offset + h * w))

    dist, geom, hit = centre = at(0)
    normal = _depth_normals(consts, centre, {"right": at(1), "left": at(-1), "down": at(w),
                                             "up": at(-w)})
    colour = self._shade(consts, o, rc, lights, jnp.where(hit, dist, 0.0), geom, hit, normal)
    # Pack the three 8-bit channels into one exact float (< 2^24) behind a division: the
    # channel interleave below does not vectorise and must not absorb the shading. The
    # [H, W] shape (not [H * W]) keeps XLA from writing the result over one of the shading's
    # own [H * W] temporaries, which makes LLVM fall back to its scalar loop.
    c8 = [jnp.round(jnp.clip(c, 0.0, 1.0) * 255.0) for c in colour]
    word = _materialize_f32((c8[0] + 256.0 * c8[1] + 65536.0 * c8[2]).reshape(h, w), o)
    word = word.astype(jnp.int32)
    shifts = jnp.asarray(np.array([0, 8, 16], np.int32))
    return ((word[..., None] >> shifts) & 255).astype(jnp.uint8)

  def _material_lookup(self, geom):
    """Per-pixel colour and material terms by select chains over the visible geoms.

    (A gather here would be fused into the shading loop and stop its vectorisation.)
    Geoms sharing a material share one select. Returns (base (r, g, b), {name: term}).
    """
    cols = {"emission": 3, "specular": 4, "shininess": 5}
    varying = [n for n in cols if n not in self._material_const]
    keys = {}  # material row -> geom ids that use it
    for g in self.scene.geom_id:
      row = tuple(float(v) for v in self._material[g, [0, 1, 2] + [cols[n] for n in varying]])
      keys.setdefault(row, []).append(int(g))
    bg = self._material[self._ngeom]
    values = [jnp.full(geom.shape, float(bg[c]), jnp.float32)
              for c in [0, 1, 2] + [cols[n] for n in varying]]
    for row, ids in keys.items():
      sel = functools.reduce(jnp.logical_or, [geom == g for g in ids])
      values = [jnp.where(sel, v, x) for v, x in zip(row, values)]
    term = {n: (self._material_const[n] if n in self._material_const
                else values[3 + varying.index(n)]) for n in cols}
    return values[:3], term

  def _shade(self, consts, o, rc, lights, dist, geom, hit, n):
    """Emission + ambient + diffuse + specular shading of the hit points: (r, g, b).

    OpenGL fixed-function style, as MuJoCo's renderer: per light, attenuation x spot x
    (ambient + diffuse max(n.l, 0)) x colour + specular (n.h)^(128 shininess); no shadows.
    All arrays are flat [H * W]; ``n`` is the camera-frame unit normal.
    """
    ux, uy, uz = consts["ux"], consts["uy"], consts["uz"]
    base, term = self._material_lookup(geom)
    spec_mat, shininess = term["specular"], term["shininess"] * 128.0
    has_spec_mat = not (isinstance(spec_mat, float) and spec_mat == 0.0)
    view = (-ux, -uy, -uz)
    colour = [term["emission"] * c for c in base]

    def add_light(to_light, amb, diff, spec, scale):
      ndl = n[0] * to_light[0] + n[1] * to_light[1] + n[2] * to_light[2]
      diffuse = jnp.maximum(ndl, 0.0)
      lit = [(float(amb[i]) + float(diff[i]) * diffuse) * base[i] for i in range(3)]
      if has_spec_mat and np.any(np.asarray(spec) > 0):
        hv = [to_light[i] + view[i] for i in range(3)]
        hinv = _inv_norm(hv[0] * hv[0] + hv[1] * hv[1] + hv[2] * hv[2])
        ndh = jnp.maximum((n[0] * hv[0] + n[1] * hv[1] + n[2] * hv[2]) * hinv, 1e-30)
        specular = jnp.where(ndl > 0, _power(ndh, shininess), 0.0) * spec_mat
        lit = [lit[i] + float(spec[i]) * specular for i in range(3)]
      for i in range(3):
        colour[i] = colour[i] + (lit[i] if scale is None else scale * lit[i])

    if self.scene.headlight is not None:
      amb, diff, spec = self.scene.headlight
      zero = jnp.zeros_like(ux)
      add_light((zero, zero, zero + 1.0), amb, diff, spec, None)  # along the view axis
    if lights is not None:
      ls = self.scene.lights
      lpos = raycast.to_camera(rc, lights[0] - o[None, :])  # [L, 3] camera frame
      ldir = raycast.to_camera(rc, lights[1])
      point = (dist * ux, dist * uy, dist * uz)  # hit points, camera frame
      for i in range(ls.count):
        if ls.kind[i] == 1:  # directional
          to_light = tuple(-ldir[i, j] + jnp.zeros_like(ux) for j in range(3))
          scale = None
        else:
          vec = [lpos[i, j] - point[j] for j in range(3)]
          dist2 = jnp.maximum(vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2], 1e-30)
          inv_l = _inv_norm(dist2)
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
        add_light(to_light, ls.ambient[i], ls.diffuse[i], ls.specular[i], scale)
    bg = self.background_rgb
    return tuple(jnp.where(hit, colour[i], float(bg[i])) for i in range(3))


def _inv_norm(sq_norm):
  """1 / sqrt(sq_norm), written so that it vectorises on XLA:CPU.

  XLA lowers ``rsqrt`` (and rewrites ``1 / sqrt(x)`` into it) to a scalar x86 intrinsic
  that keeps LLVM from vectorising the whole fused loop (measured: the shading ran ~8x
  slower). Dividing by ``max(sqrt(x), tiny)`` is not pattern-matched into rsqrt.
  """
  return 1.0 / jnp.maximum(jnp.sqrt(sq_norm), 1e-15)


def _power(x, exponent):
  """x ** exponent for x > 0: repeated squaring when the exponent is a static integer."""
  if isinstance(exponent, float) and exponent.is_integer() and 0 <= exponent <= 1024:
    e, result, base = int(exponent), None, x
    while e:
      if e & 1:
        result = base if result is None else result * base
      e >>= 1
      if e:
        base = base * base
    return jnp.ones_like(x) if result is None else result
  return jnp.exp(exponent * jnp.log(x))


def _materialize_f32(x, anchor):
  """Returns float32 ``x`` unchanged, as the output of a division XLA cannot fold.

  XLA:CPU fuses elementwise chains into their consumers. When a consumer reads each element
  several times (neighbour differences, multi-column lookups) the producer is recomputed
  for every read, and some consumers (gathers, concatenations, channel interleaves) do not
  vectorise, dragging all the fused arithmetic into a scalar loop. XLA does not fuse an
  expensive producer (a divide) into a consumer that reuses its elements, so dividing by a
  runtime 1.0 (``0 * tanh(finite) + 1``, exact) makes ``x`` materialise once.
  (``lax.optimization_barrier`` does not help: XLA:CPU removes it before fusion.)
  """
  one = 1.0 + 0.0 * jnp.tanh(anchor[0])
  return x / one


def _materialize(x, anchor):
  """``_materialize_f32`` for uint32 bit patterns (the division by 1.0 is exact)."""
  xf = _materialize_f32(jax.lax.bitcast_convert_type(x, jnp.float32), anchor)
  return jax.lax.bitcast_convert_type(xf, jnp.uint32)


def _shading_constants(height, width, fovy):
  """Static flat [H * W] per-pixel arrays for ``_depth_normals`` and the lighting."""
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


def _depth_normals(consts, centre, neighbours):
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
    consts: ``_shading_constants`` of the camera.
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
  inv = _inv_norm(nx * nx + ny * ny + nz * nz)
  return nx * inv, ny * inv, nz * inv
