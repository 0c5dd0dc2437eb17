"""What the multi-process tests share: a free localhost port, and waiting for a group of
processes (all killed if one overruns; every one must exit 0)."""

import socket
import subprocess
import time


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
