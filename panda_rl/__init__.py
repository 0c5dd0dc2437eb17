"""panda_rl: Franka Panda manipulation RL in JAX + MuJoCo-XLA, one jitted loop per iteration."""

from panda_rl import _xla

_xla.configure()  # must run before anything creates a JAX backend
_xla.configure_cpu_devices()  # one XLA:CPU device per core (see panda_rl/_xla.py)
_xla.patch_mjx()  # fast MJX body-tree kinematics on CPU (see panda_rl/_xla.py)

from panda_rl import _mjx_sums  # noqa: E402

_mjx_sums.patch()  # MJX's solver sums kept fusible on CPU (see panda_rl/_mjx_sums.py)

from panda_rl import compile_cache  # noqa: E402

compile_cache.configure()  # JAX's persistent compilation cache (see panda_rl/compile_cache.py)

from panda_rl.envs.registry import make, registered_envs  # noqa: E402

__all__ = ["make", "registered_envs", "load_policy"]
__version__ = "0.1.0"


def __getattr__(name):
  # Lazy: `import panda_rl` stays cheap; the policy loader pulls in orbax and flax.
  if name == "load_policy":
    from panda_rl.policy import load_policy

    return load_policy
  raise AttributeError(f"module 'panda_rl' has no attribute {name!r}")
