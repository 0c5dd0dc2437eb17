"""scripts/profile_trace.py: ops charged to where they came from, by self time."""

from types import SimpleNamespace

import pytest
from script_modules import load_script

trace = load_script("profile_trace")

HLO = """
ENTRY %main {
  %dot.7 = f32[8,15,15]{2,1,0} dot(%a, %b), metadata={op_name="jit(rollout)/while/body/closed_call/shard_map/vmap()/while/body/closed_call/step/forward/solve/while/body/dot_general" source_file="x.py"}
  %fusion.3 = f32[8,37,3]{2,1,0} fusion(%dot.7), kind=kLoop, metadata={op_name="jit(rollout)/while/body/closed_call/vmap()/step/forward/solve/mul"}
  %reduce-window.2 = f32[8,2,3]{2,1,0} reduce-window(%fusion.3, %c), window={size=1x32x1}
  ROOT %while.1 = (f32[8]) while(%t), condition=%cond, body=%body, metadata={op_name="jit(rollout)/while"}
}
"""


def test_op_origins_reads_metadata_and_lends_it_to_ops_without():
  origins = trace.op_origins(HLO)
  assert origins["dot.7"].endswith("step/forward/solve/while/body/dot_general")
  # The compiler's reduce-window (split off a reduction) has no metadata: its operand's.
  assert origins["reduce-window.2"] == origins["fusion.3"]


@pytest.mark.parametrize("op_name, depth, expected", [
    ("jit(rollout)/while/body/closed_call/shard_map/vmap()/while/body/closed_call/step/"
     "forward/solve/while/body/dot_general", 3, "forward/solve/dot_general"),
    ("jit(rollout)/while/body/closed_call/vmap()/step/forward/solve/mul", 2, "forward/solve"),
    ("jit(rollout)/while/body/reduce_sum", 3, "reduce_sum"),  # outside the env's step
    ("jit(rollout)/while", 3, "(the loops themselves)"),
])
def test_origin_keeps_the_path_after_the_env_step(op_name, depth, expected):
  assert trace.origin(op_name, depth) == expected


def _event(name, start, duration):
  return SimpleNamespace(name=name, start_ns=start, duration_ns=duration)


def test_self_times_subtract_nested_ops_and_charge_chunks_to_their_op():
  origins = {"while.1": "jit(rollout)/while", "dot.7": "a/step/forward/solve/dot_general",
             "copy.2": "a/step/forward/solve/transpose"}
  thread = SimpleNamespace(name="tf_XLAEigen/1", events=[
      _event("while.1", 0, 100),          # holds everything below
      _event("dot.7", 10, 30),
      _event("copy.2", 50, 20),
      _event("Transpose", 55, 10),        # a chunk of copy.2's work: charged to copy.2
      _event("end: dot.7", 40, 1),        # markers are not ops
  ])
  waiting = SimpleNamespace(name="tf_XLAPjRtCpuClient/2", events=[_event("wait", 0, 500)])
  times = trace.self_times(SimpleNamespace(planes=[SimpleNamespace(lines=[thread, waiting])]),
                           origins)
  assert times == {"while.1": 50, "dot.7": 30, "copy.2": 20}
  rows, total = trace.table(times, origins, depth=3, calls=1)
  assert total == pytest.approx(100 / 1e6)
  assert [r["origin"] for r in rows] == ["(the loops themselves)", "forward/solve/dot_general",
                                         "forward/solve/transpose"]
  assert rows[0]["share"] == pytest.approx(0.5)
