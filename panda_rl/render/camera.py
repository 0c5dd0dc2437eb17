"""MuJoCo's pinhole camera model and the tiling of an image into pixel blocks (numpy, static).

MuJoCo cameras look along their local -z axis with +y up and +x to the right; ``fovy`` is the
full vertical field of view in degrees, and the horizontal extent follows from the image's
aspect ratio (``mjr_render``'s frustum). Rays go through pixel centres; pixel (0, 0) is the
top-left pixel of the image (row index grows downwards, as in ``mujoco.Renderer`` output).

For pixel (row i, column j) of an H x W image the ray direction in the camera frame is
``normalize(x, y, -1)`` with ``x = (2 (j + 0.5) / W - 1) tan(fovy / 2) W / H`` and
``y = (1 - 2 (i + 0.5) / H) tan(fovy / 2)``; its world direction is ``cam_xmat @ dir`` and it
starts at ``cam_xpos``. ``(x, y)`` are the pixel's *tangent coordinates*: a camera-frame point
``(X, Y, Z)`` with ``Z < 0`` lies on the ray of tangent coordinates ``(X / -Z, Y / -Z)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def pixel_tangents(height: int, width: int, fovy_deg: float) -> tuple[np.ndarray, np.ndarray]:
  """Tangent coordinates of every pixel centre, two [H, W] float64 arrays (x right, y up)."""
  tan_half = np.tan(np.deg2rad(fovy_deg) / 2.0)
  cols = (2.0 * (np.arange(width) + 0.5) / width - 1.0) * tan_half * (width / height)
  rows = (1.0 - 2.0 * (np.arange(height) + 0.5) / height) * tan_half
  return np.broadcast_to(cols[None, :], (height, width)), np.broadcast_to(rows[:, None],
                                                                          (height, width))


def pixel_directions(height: int, width: int, fovy_deg: float) -> np.ndarray:
  """Unit ray directions in the camera frame, [H, W, 3] float64 (see the module doc)."""
  x, y = pixel_tangents(height, width, fovy_deg)
  d = np.stack([x, y, -np.ones_like(x)], axis=-1)
  return d / np.linalg.norm(d, axis=-1, keepdims=True)


def world_rays(cam_xpos: np.ndarray, cam_xmat: np.ndarray, height: int, width: int,
               fovy_deg: float) -> tuple[np.ndarray, np.ndarray]:
  """Origin [3] and unit world directions [H, W, 3] of every pixel ray (for mj_ray checks)."""
  d = pixel_directions(height, width, fovy_deg)
  return np.asarray(cam_xpos, np.float64), d @ np.asarray(cam_xmat, np.float64).reshape(3, 3).T


@dataclasses.dataclass(frozen=True)
class Tiling:
  """An image cut into T tiles of ``tile_h x tile_w`` pixels (the grid is padded to whole tiles).

  Attributes:
    dirs: [3, T, P] float32 camera-frame unit ray direction of each tile pixel (P pixels per
      tile); padded pixels repeat the nearest image pixel and are cropped away.
    height, width, tile_h, tile_w, tiles_y, tiles_x: the geometry of the tiling.
  """

  dirs: np.ndarray
  height: int
  width: int
  tile_h: int
  tile_w: int
  tiles_y: int
  tiles_x: int

  @property
  def num_tiles(self) -> int:
    return self.tiles_y * self.tiles_x

  @property
  def pixels_per_tile(self) -> int:
    return self.tile_h * self.tile_w

  def untile(self, x):
    """[..., T, P] per-tile values -> [..., H, W] image (works on numpy and jax arrays)."""
    lead = x.shape[:-2]
    x = x.reshape(lead + (self.tiles_y, self.tiles_x, self.tile_h, self.tile_w))
    n = len(lead)
    perm = tuple(range(n)) + (n, n + 2, n + 1, n + 3)
    x = x.transpose(perm).reshape(lead + (self.tiles_y * self.tile_h,
                                          self.tiles_x * self.tile_w))
    return x[..., :self.height, :self.width]


def make_tiling(height: int, width: int, fovy_deg: float, tile_h: int, tile_w: int) -> Tiling:
  """Cuts an H x W image into tiles; tiles larger than the image shrink to it."""
  tile_h, tile_w = min(tile_h, height), min(tile_w, width)
  ty, tx = -(-height // tile_h), -(-width // tile_w)
  d = pixel_directions(height, width, fovy_deg)  # [H, W, 3]
  rows = np.minimum(np.arange(ty * tile_h), height - 1)
  cols = np.minimum(np.arange(tx * tile_w), width - 1)

  def tiles(a):  # [H, W, ...] -> [T, P, ...]
    a = a[rows][:, cols]
    a = a.reshape((ty, tile_h, tx, tile_w) + a.shape[2:])
    a = np.swapaxes(a, 1, 2)
    return a.reshape((ty * tx, tile_h * tile_w) + a.shape[4:])

  dirs = np.moveaxis(tiles(d), -1, 0).astype(np.float32)  # [3, T, P]
  return Tiling(dirs=dirs, height=height, width=width, tile_h=tile_h,
                tile_w=tile_w, tiles_y=ty, tiles_x=tx)
