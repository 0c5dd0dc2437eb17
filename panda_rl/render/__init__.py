"""Pure-JAX rendering of MuJoCo primitive-geom scenes (no OpenGL): see ``renderer.py``."""

from panda_rl.render.camera import pixel_directions, world_rays
from panda_rl.render.renderer import OUTPUTS, Renderer

__all__ = ["OUTPUTS", "Renderer", "pixel_directions", "world_rays"]
