"""Static scene description taken once from a ``mujoco.MjModel`` for the JAX renderer.

Everything here is numpy, computed at construction: which geoms are visible, their types,
sizes, colours and materials, the cameras' intrinsics and the lights. Nothing in this module
touches JAX, so a :class:`Scene` can be built, inspected and pickled without a backend.

Visibility follows ``mujoco.mj_ray`` exactly (``engine_ray.c: ray_eliminate``): a geom is seen
when its group is one of ``geom_groups`` and its alpha is not zero (the material's alpha when the
geom has a material, the geom's own alpha otherwise). Alpha between 0 and 1 is drawn opaque.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Sequence, Tuple

import mujoco
import numpy as np

# MuJoCo geom type codes (mjtGeom).
PLANE = int(mujoco.mjtGeom.mjGEOM_PLANE)
SPHERE = int(mujoco.mjtGeom.mjGEOM_SPHERE)
CAPSULE = int(mujoco.mjtGeom.mjGEOM_CAPSULE)
ELLIPSOID = int(mujoco.mjtGeom.mjGEOM_ELLIPSOID)
CYLINDER = int(mujoco.mjtGeom.mjGEOM_CYLINDER)
BOX = int(mujoco.mjtGeom.mjGEOM_BOX)
SUPPORTED_TYPES = (PLANE, SPHERE, CAPSULE, ELLIPSOID, CYLINDER, BOX)
TYPE_NAMES = {PLANE: "plane", SPHERE: "sphere", CAPSULE: "capsule", ELLIPSOID: "ellipsoid",
              CYLINDER: "cylinder", BOX: "box"}

# MuJoCo's compiler default geom rgba: a geom with a material and this rgba takes the
# material's colour (an rgba that differs from it overrides the material).
_DEFAULT_RGBA = np.array([0.5, 0.5, 0.5, 1.0], np.float32)
# Material defaults for geoms without a material (mjsMaterial defaults).
_DEFAULT_SPECULAR = 0.5
_DEFAULT_SHININESS = 0.5


@dataclasses.dataclass(frozen=True)
class CameraSpec:
  """One MJCF camera, as the renderer needs it.

  Attributes:
    name: the MJCF camera name.
    cam_id: index into ``mjData.cam_xpos`` / ``cam_xmat``.
    fovy: vertical field of view in degrees.
  """

  name: str
  cam_id: int
  fovy: float


@dataclasses.dataclass(frozen=True)
class LightSpec:
  """Model lights in their body frames; shapes are [L, ...] (L may be 0).

  ``kind`` is 0 spot, 1 directional, 2 point (mjtLightType); image lights are drawn as
  directional. Positions/directions are body-local; ``body_id`` says which body carries them.
  """

  body_id: np.ndarray  # [L] int32
  kind: np.ndarray  # [L] int32
  pos: np.ndarray  # [L, 3]
  dir: np.ndarray  # [L, 3] unit
  ambient: np.ndarray  # [L, 3]
  diffuse: np.ndarray  # [L, 3]
  specular: np.ndarray  # [L, 3]
  attenuation: np.ndarray  # [L, 3] constant, linear, quadratic
  cutoff_cos: np.ndarray  # [L] cos of the spot cutoff angle
  exponent: np.ndarray  # [L] spot exponent

  @property
  def count(self) -> int:
    return int(self.kind.shape[0])


@dataclasses.dataclass(frozen=True)
class Scene:
  """The visible primitive geoms of a model and how to shade them.

  Geoms are stored in "visible order" (v = 0..V-1); ``geom_id[v]`` maps back to the model's
  geom index, which is what the segmentation output reports.

  Attributes:
    geom_id: [V] int32 model geom index of each visible geom.
    geom_type: [V] int32 mjtGeom code.
    size: [V, 3] float32 geom_size.
    rgb: [V, 3] float32 base colour (material colour when the geom uses it).
    emission, specular, shininess: [V] float32 material terms (MuJoCo defaults without one).
    cameras: name -> CameraSpec.
    lights: the model's active lights.
    headlight: (ambient[3], diffuse[3], specular[3]) or None when the headlight is off.
  """

  geom_id: np.ndarray
  geom_type: np.ndarray
  size: np.ndarray
  rgb: np.ndarray
  emission: np.ndarray
  specular: np.ndarray
  shininess: np.ndarray
  cameras: Dict[str, CameraSpec]
  lights: LightSpec
  headlight: Tuple[np.ndarray, np.ndarray, np.ndarray] | None

  @property
  def num_visible(self) -> int:
    return int(self.geom_id.shape[0])

  def indices_of_type(self, geom_type: int) -> np.ndarray:
    """Visible-order indices of the geoms of one type, [G_t] int32."""
    return np.nonzero(self.geom_type == geom_type)[0].astype(np.int32)


def visible_geoms(m: mujoco.MjModel, geom_groups: Sequence[int] | None) -> np.ndarray:
  """Model indices of the geoms ``mj_ray(geomgroup=...)`` would consider (flg_static=1)."""
  ids = []
  for i in range(m.ngeom):
    matid = int(m.geom_matid[i])
    alpha = m.mat_rgba[matid, 3] if matid >= 0 else m.geom_rgba[i, 3]
    if alpha == 0:
      continue
    if geom_groups is not None:
      group = int(np.clip(m.geom_group[i], 0, mujoco.mjNGROUP - 1))
      if group not in geom_groups:
        continue
    ids.append(i)
  return np.asarray(ids, np.int32)


def _cameras(m: mujoco.MjModel, names: Sequence[str]) -> Dict[str, CameraSpec]:
  cams = {}
  for name in names:
    cam_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, name)
    if cam_id < 0:
      known = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(m.ncam)]
      raise ValueError(f"camera {name!r} not in the model; cameras: {known}")
    if hasattr(m, "cam_projection") and int(m.cam_projection[cam_id]) != 0:
      raise NotImplementedError(f"camera {name!r}: only perspective cameras are supported")
    if np.any(m.cam_sensorsize[cam_id] != 0):
      raise NotImplementedError(
          f"camera {name!r} sets sensorsize/focal intrinsics; only fovy is supported")
    cams[name] = CameraSpec(name=name, cam_id=int(cam_id), fovy=float(m.cam_fovy[cam_id]))
  return cams


def _lights(m: mujoco.MjModel) -> LightSpec:
  active = [i for i in range(m.nlight) if m.light_active[i]]
  idx = np.asarray(active, np.int32)
  if hasattr(m, "light_type"):
    kind = np.asarray(m.light_type[idx], np.int32).reshape(-1)
    kind = np.where(kind == 3, 1, kind)  # image-based lights: treat as directional
  else:  # older MuJoCo: directional flag
    kind = np.where(np.asarray(m.light_directional[idx]).reshape(-1) != 0, 1, 0)
  direction = np.asarray(m.light_dir[idx], np.float64).reshape(-1, 3)
  norm = np.linalg.norm(direction, axis=-1, keepdims=True)
  direction = direction / np.where(norm > 0, norm, 1.0)
  f32 = lambda x, shape: np.asarray(x, np.float32).reshape(shape)  # noqa: E731
  return LightSpec(
      body_id=np.asarray(m.light_bodyid[idx], np.int32).reshape(-1),
      kind=kind.astype(np.int32),
      pos=f32(m.light_pos[idx], (-1, 3)),
      dir=f32(direction, (-1, 3)),
      ambient=f32(m.light_ambient[idx], (-1, 3)),
      diffuse=f32(m.light_diffuse[idx], (-1, 3)),
      specular=f32(m.light_specular[idx], (-1, 3)),
      attenuation=f32(m.light_attenuation[idx], (-1, 3)),
      cutoff_cos=f32(np.cos(np.deg2rad(np.asarray(m.light_cutoff[idx]))), (-1,)),
      exponent=f32(m.light_exponent[idx], (-1,)),
  )


def build_scene(m: mujoco.MjModel, camera_names: Sequence[str],
                geom_groups: Sequence[int] | None = (0, 1, 2),
                use_model_lights: bool = True, use_headlight: bool = True) -> Scene:
  """Extracts what the renderer needs from ``m`` (numpy only).

  Args:
    m: the compiled model.
    camera_names: MJCF camera names to render.
    geom_groups: geom groups that are drawn (MuJoCo's viewer default shows 0, 1, 2); None
      draws every group.
    use_model_lights: shade with the model's <light>s.
    use_headlight: shade with the model's headlight (``<visual><headlight>``) if it is active.

  Raises:
    ValueError: a visible geom has a type the renderer does not draw (mesh, hfield, sdf), or
      a camera name is unknown.
  """
  vis = visible_geoms(m, geom_groups)
  types = _checked_types(m, vis)
  rgb, emission, specular, shininess = _materials(m, vis)
  lights = _lights(m)
  if not use_model_lights:
    lights = LightSpec(*[np.asarray(x)[:0] for x in dataclasses.astuple(lights)])
  return Scene(
      geom_id=vis,
      geom_type=types,
      size=np.asarray(m.geom_size[vis], np.float32).reshape(-1, 3),
      rgb=rgb,
      emission=emission,
      specular=specular,
      shininess=shininess,
      cameras=_cameras(m, camera_names),
      lights=lights,
      headlight=_headlight(m) if use_headlight else None,
  )


def _checked_types(m: mujoco.MjModel, vis: np.ndarray) -> np.ndarray:
  """[V] int32 geom types of the visible geoms ``vis``; fails on a type it cannot draw."""
  types = np.asarray(m.geom_type[vis], np.int32)
  bad = [int(i) for i, t in zip(vis, types) if t not in SUPPORTED_TYPES]
  if bad:
    names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, i) or f"#{i}" for i in bad]
    raise ValueError(f"geoms {names} have types the renderer cannot draw (supported: "
                     f"{sorted(TYPE_NAMES.values())}); move them to a hidden geom group")
  return types


def _materials(m: mujoco.MjModel, vis: np.ndarray):
  """Base colour [V, 3] and emission, specular, shininess [V] (float32) of geoms ``vis``.

  A geom with a material takes the material's colour unless its own rgba differs from the
  compiler default (then its rgba overrides it); without a material, MuJoCo's defaults.
  """
  rgb, emission, specular, shininess = [], [], [], []
  for i in vis:
    matid = int(m.geom_matid[i])
    geom_rgba = np.asarray(m.geom_rgba[i], np.float32)
    if matid >= 0:
      use_mat = np.allclose(geom_rgba, _DEFAULT_RGBA)
      rgb.append(m.mat_rgba[matid, :3] if use_mat else geom_rgba[:3])
      emission.append(float(m.mat_emission[matid]))
      specular.append(float(m.mat_specular[matid]))
      shininess.append(float(m.mat_shininess[matid]))
    else:
      rgb.append(geom_rgba[:3])
      emission.append(0.0)
      specular.append(_DEFAULT_SPECULAR)
      shininess.append(_DEFAULT_SHININESS)
  return (np.asarray(rgb, np.float32).reshape(-1, 3), np.asarray(emission, np.float32),
          np.asarray(specular, np.float32), np.asarray(shininess, np.float32))


def _headlight(m: mujoco.MjModel):
  """(ambient, diffuse, specular) float32 [3] each of the model's headlight, or None if off."""
  if not m.vis.headlight.active:
    return None
  hl = m.vis.headlight
  return tuple(np.asarray(x, np.float32).copy() for x in (hl.ambient, hl.diffuse, hl.specular))
