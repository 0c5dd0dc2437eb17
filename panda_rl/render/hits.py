"""Nearest hit per pixel: the visible geoms grouped by type, culling, packed hits.

:class:`HitCaster` holds the static geom tables of a scene (numpy, built once) and casts
one camera's rays against them (pure JAX):

* **One routine per geom type**: geoms are sorted by type into contiguous groups, each
  intersected by its ``raycast`` routine, vectorised over [tiles, candidates, pixels].
* **Culling** (``culling.py``): a type group with more geoms than its candidate cap is
  ray-tested, per tile, only against its nearest overlapping geoms (:meth:`candidates`).
* **Packed hits**: a distance's float bits with the geom id in the low bits, so one
  unsigned ``minimum`` per candidate keeps the nearest hit and its geom
  (:meth:`nearest_hit`, :meth:`unpack`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from panda_rl.render import culling
from panda_rl.render import raycast
from panda_rl.render import scene as scene_lib
from panda_rl.render.fusion import materialize, materialize_f32

# Order in which geom types are intersected (cheap, large ones first).
TYPE_ORDER = (scene_lib.PLANE, scene_lib.BOX, scene_lib.SPHERE, scene_lib.CAPSULE,
              scene_lib.CYLINDER, scene_lib.ELLIPSOID)
# Where the never-hit "dummy" candidate sits: this far behind the camera (camera +z).
_DUMMY_BEHIND = 100.0


def candidate_cap(geom_type: int, max_candidates: int | Mapping[str, int] | None
                  ) -> Optional[int]:
  """Candidates per tile for a geom type (None: no culling). Planes are never culled."""
  if geom_type == scene_lib.PLANE or max_candidates is None:
    return None
  if isinstance(max_candidates, int):
    return max_candidates
  return max_candidates.get(scene_lib.TYPE_NAMES[geom_type])


@dataclasses.dataclass(frozen=True, eq=False)
class HitCaster:
  """The visible geoms of a scene, sorted by type, and how to ray-test them.

  Attributes:
    geom_id: [V] int32 model geom id of each visible geom, sorted by type.
    geom_type: [V] int32 mjtGeom code. size: [V, 3] float32 geom sizes.
    bound: (axis [V], half [V], radius [V]) bounding capsules (``culling.py``).
    groups: per type present, (type, start, stop, k): visible geoms [start, stop) are of
      this type; k candidates per tile are ray-tested (None: every geom at every pixel).
    planes_bounded: some plane is clipped to its size (else every plane is infinite).
    id_bits: low bits of a packed hit that hold the model geom id.
  """

  geom_id: np.ndarray
  geom_type: np.ndarray
  size: np.ndarray
  bound: Tuple[np.ndarray, np.ndarray, np.ndarray]
  groups: Tuple[Tuple[int, int, int, Optional[int]], ...]
  planes_bounded: bool
  id_bits: int

  @classmethod
  def build(cls, scene: scene_lib.Scene, ngeom: int,
            max_candidates: int | Mapping[str, int] | None) -> "HitCaster":
    """Sorts ``scene``'s visible geoms by :data:`TYPE_ORDER` (numpy, once).

    Args:
      scene: the static scene. ngeom: the model's geom count (sets the id bits).
      max_candidates: per tile, geoms ray-tested per type (see ``Renderer``).
    """
    order = np.argsort(
        [TYPE_ORDER.index(t) for t in scene.geom_type], kind="stable").astype(np.int32)
    geom_type, size = scene.geom_type[order], scene.size[order]
    groups = []
    for t in TYPE_ORDER:
      sl = np.nonzero(geom_type == t)[0]
      if sl.size:
        k = candidate_cap(t, max_candidates)
        # culling a type with no more geoms than candidate slots would save no work
        groups.append((t, int(sl[0]), int(sl[-1]) + 1, k if k is not None and k < sl.size
                       else None))
    return cls(geom_id=scene.geom_id[order], geom_type=geom_type, size=size,
               bound=culling.bounding_capsules(geom_type, size), groups=tuple(groups),
               planes_bounded=bool(np.any(size[geom_type == scene_lib.PLANE][:, :2] > 0)),
               id_bits=max(1, int(np.ceil(np.log2(max(ngeom, 2))))))

  def overlap(self, cone, o, rc, start, stop, geom_pos, geom_mat):
    """[T, G] which geoms [start, stop) a tile's rays may hit, and [G] nearest distances.

    Args:
      cone: the camera's ``culling.tile_cones`` (axis, cos, sin).
      o: [3] camera position. rc: [3, 3] camera rotation.
      geom_pos, geom_mat: [V, 3], [V, 3, 3] world poses of the visible geoms.
    """
    axis, half, radius = (x[start:stop] for x in self.bound)
    pos, mat = geom_pos[start:stop], geom_mat[start:stop]
    onehot = jnp.asarray(np.eye(3, dtype=np.float32)[axis])  # [G, 3] bounding axis index
    world_axis = jnp.sum(mat * onehot[:, None, :], axis=-1)  # [G, 3] that column of mat
    cone_axis, cone_cos, cone_sin = cone
    return culling.visible(cone_axis, cone_cos, cone_sin, raycast.to_camera(rc, pos - o[None, :]),
                           raycast.to_camera(rc, world_axis), jnp.asarray(half),
                           jnp.asarray(radius))

  def candidates(self, cone, o, rc, start, stop, geom_pos, geom_mat, k):
    """[T, k] indices into the type group (G = the never-hit dummy) of the nearest overlaps.

    Ranks by pairwise comparison over the group's few geoms, unrolled into elementwise ops:
    on XLA:CPU (with the MJX fast-path flags) both ``lax.top_k``'s sort and reductions cost
    far more than the [T, G] x G compares.
    """
    overlap, near = self.overlap(cone, o, rc, start, stop, geom_pos, geom_mat)
    g = stop - start
    # (materialised twice: each stage reads its input many times, and XLA would otherwise
    # recompute the culling test inside every read)
    key = materialize_f32(jnp.where(overlap, near[None, :], 3e38), o)  # [T, G], near first
    rank = jnp.zeros(key.shape, jnp.float32)  # number of nearer geoms (ties: lower index)
    for j in range(g):
      kj = key[:, j:j + 1]
      ahead = (kj < key) | ((kj == key) & (np.arange(g) > j)[None, :])
      rank = rank + ahead.astype(jnp.float32)
    rank = materialize_f32(jnp.where(key < 1e38, rank, float(k)), o)  # k: not a candidate
    # slot s takes the geom of rank s (the broadcast over slots is what keeps XLA from
    # fusing, and so recomputing, the ranking into this selection)
    match = rank[:, None, :] == np.arange(k, dtype=np.float32)[None, :, None]  # [T, k, G]
    idx = jnp.full(match.shape[:2], g, jnp.int32)  # the dummy unless some geom has the rank
    for j in range(g):
      idx = jnp.where(match[:, :, j], j, idx)
    return idx

  def _culled_columns(self, t, cone, o, rc, start, stop, geom_pos, geom_mat, k):
    """Per tile, the ``raycast.PARAMS`` columns and geom ids of the k candidates:
    ([T, K, 1] each, [T, K] uint32)."""
    pos, mat = geom_pos[start:stop], geom_mat[start:stop]
    size = jnp.asarray(self.size[start:stop])
    gids = self.geom_id[start:stop].astype(np.uint32)
    cand = self.candidates(cone, o, rc, start, stop, geom_pos, geom_mat, k)  # [T, k]
    # append the dummy: a geom of this type far behind the camera, never hit
    dummy_pos = o + rc[:, 2] * _DUMMY_BEHIND
    pos = jnp.concatenate([pos, dummy_pos[None]], 0)
    mat = jnp.concatenate([mat, rc[None]], 0)
    size = jnp.concatenate([size, size[:1]], 0)
    # (both materialised: the table is computed once, not per gathered element, and a
    # gather fused into the per-pixel loop would stop its vectorisation)
    table = materialize_f32(raycast.PARAMS[t](o, rc, pos, mat, size), o)  # [G + 1, F]
    cols = materialize_f32(jnp.take(table, cand, axis=0, mode="clip"), o)  # [T, K, F]
    cols = tuple(cols[..., f:f + 1] for f in range(table.shape[1]))  # [T, K, 1] each
    slot_ids = jnp.take(jnp.asarray(np.append(gids, gids[:1])), cand, mode="clip")
    return cols, slot_ids

  def _all_columns(self, t, o, rc, start, stop, geom_pos, geom_mat):
    """The ``raycast.PARAMS`` columns and geom ids of every geom of the group, shared by
    all tiles: ([1, G, 1] each, [1, G] uint32)."""
    pos, mat = geom_pos[start:stop], geom_mat[start:stop]
    size = jnp.asarray(self.size[start:stop])
    gids = self.geom_id[start:stop].astype(np.uint32)
    table = raycast.PARAMS[t](o, rc, pos, mat, size)  # [G, F]
    cols = tuple(table[None, :, f:f + 1] for f in range(table.shape[1]))  # [1, G, 1]
    return cols, jnp.asarray(gids)[None, :]  # [1, G]

  def nearest_hit(self, tiling, cone, o, rc, geom_pos, geom_mat):
    """Nearest hit of every pixel ray, packed: [T, P] uint32 (see :meth:`unpack`).

    A hit distance t >= 0 is a non-negative float32, whose bit pattern orders like the float;
    its low ``id_bits`` bits are replaced by the hit geom's model id, so one unsigned
    ``minimum`` per candidate keeps both the nearest distance and its geom, with no select
    chains, no reductions and no gathers in the per-pixel loop (on XLA:CPU with the MJX
    fast-path flags, reductions run scalar and a fused gather stops vectorisation).

    Args:
      tiling: the camera's ``camera.Tiling``. cone: its ``culling.tile_cones``.
      o: [3] camera position. rc: [3, 3] camera rotation.
      geom_pos, geom_mat: [V, 3], [V, 3, 3] world poses of the visible geoms.
    """
    ux, uy, uz = (jnp.asarray(c)[:, None, :] for c in tiling.dirs)  # [T, 1, P]
    clear = np.uint32(~((1 << self.id_bits) - 1) & 0xFFFFFFFF)
    best = None
    for t, start, stop, k in self.groups:
      if k is not None:
        cols, slot_ids = self._culled_columns(t, cone, o, rc, start, stop, geom_pos,
                                              geom_mat, k)
      else:
        cols, slot_ids = self._all_columns(t, o, rc, start, stop, geom_pos, geom_mat)
      if t == scene_lib.PLANE:
        dist = raycast.plane_hit(cols, ux, uy, uz, bounded=self.planes_bounded)
      else:
        dist = raycast.HIT[t](cols, ux, uy, uz)  # [T, K, P]
      bits = jax.lax.bitcast_convert_type(dist, jnp.uint32)
      packed = (bits & clear) | slot_ids[:, :, None]
      for slot in range(packed.shape[1]):
        best = packed[:, slot, :] if best is None else jnp.minimum(best, packed[:, slot, :])
    if best is None:  # nothing visible at all
      best = jnp.full((tiling.num_tiles, tiling.pixels_per_tile),
                      jax.lax.bitcast_convert_type(jnp.float32(raycast.MISS), jnp.uint32))
    return materialize(best, o)

  def unpack(self, packed):
    """packed uint32 -> (distance float32, model geom id int32 or -1, hit bool), same shape.

    The id bits replaced the distance's lowest mantissa bits; setting the top one of them
    returns the middle of the truncated range, so the depth error is at most
    2^-(24 - id_bits) relative (6e-6 m at 1 m with 5 id bits), plus float32 rounding.
    """
    mask = np.uint32((1 << self.id_bits) - 1)
    half = np.uint32(1 << (self.id_bits - 1))
    dist = jax.lax.bitcast_convert_type((packed & ~mask) | half, jnp.float32)
    hit = dist < 0.5 * raycast.MISS
    geom = jnp.where(hit, (packed & mask).astype(jnp.int32), -1)
    return dist, geom, hit
