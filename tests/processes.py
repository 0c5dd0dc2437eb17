"""What the multi-process tests share: a free localhost port, waiting for a group of
processes (all killed if one overruns; every one must exit 0), and a child environment with a
chosen number of CPU devices."""

import socket
import subprocess
import time

from panda_rl._xla import DEVICE_COUNT_FLAG


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def finish(procs, timeout=900):
  """Each process's output, once all have exited 0 within ``timeout`` seconds in total."""
  outs = []
  deadline = time.time() + timeout
  for p in procs:
    try:
      outs.append(p.communicate(timeout=max(1, deadline - time.time()))[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-6000:]
  return outs


def with_cpu_devices(env, devices):
  """``env`` for a child process that gets ``devices`` XLA CPU devices through
  ``PANDA_RL_CPU_DEVICES`` (panda_rl/_xla.py), whatever this machine's cores. A device count
  already in ``XLA_FLAGS`` would win over that variable, so it is taken out."""
  e = dict(env, PANDA_RL_CPU_DEVICES=str(devices))
  e["XLA_FLAGS"] = " ".join(f for f in e.get("XLA_FLAGS", "").split()
                            if not f.startswith(DEVICE_COUNT_FLAG))
  return e
