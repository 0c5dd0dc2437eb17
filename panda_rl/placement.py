"""Placement: where ``env``, ``rollout`` and ``actor`` run, as ``jax.sharding`` meshes.

``cluster.component_placement`` names global device ranges for the three components of a
training iteration::

    "env,rollout,actor:all"                     collocated (one program per iteration)
    "env:0-3;rollout:4-7;actor:8-15"            disaggregated (16 devices)
    "env:0-7;rollout:8-15;actor:0-15"           hybrid (+ rollout.pipeline_stage_num=2)

Entries are ``group:range`` joined by ``;`` (or ``,``); a group is one or more component
names joined by ``,``; a range is ``all``, ``3`` or ``0-3`` (inclusive). Device ``i`` is
``jax.devices()[i]``: global, so on a pod every process reads the same placement. A dict
works too (notebooks): ``{"env": "0-3", "rollout": "4-7", "actor": (8, 15)}``.

How a placement maps onto ``jax.sharding`` (one 1-D mesh, axis ``"batch"``, per group):

* **env**: the [B] env state (physics included) is sharded along the env batch over the env
  devices, ``NamedSharding(env_mesh, P("batch"))``: each device steps B / n_env envs, under
  ``jax.shard_map`` (:meth:`Placement.sharded_env`), so that the devices do not meet inside
  a step (the solver's loop and the resets are decided per device; results are unchanged).
* **rollout**: policy parameters and the observation normaliser are replicated on the
  rollout devices (``P()``); the observations of a step arrive batch-sharded, so inference
  is data parallel.
* **actor**: the update is data parallel over the actor devices: parameters and optimiser
  state replicated, the trajectories [T, B] sharded along B, and every minibatch constrained
  to ``P(None, "batch")`` (:func:`panda_rl.agents.sgd.minibatch_epochs`' ``constrain``).
  Under ``jax.jit`` with a sharded batch and replicated parameters, XLA's SPMD partitioner
  computes each device's part of the loss and inserts the all-reduce that averages the
  gradients (and the metric means) over the actor devices; no hand-written ``psum``.
* **transfers** between groups are explicit copies to the target sharding
  (:class:`panda_rl.transfer.Mover`: ``jax.device_put`` on one process, a collective
  program over both groups' devices across processes), and only where the groups' devices
  differ: parameters + normaliser to the rollout devices once per iteration (after the
  update), trajectories to the actor devices once per rollout, and, when env and rollout
  are on different devices, each step's actions (rollout -> env) and observations
  (env -> rollout).

The programs that run an iteration under a placement (one fused program when collocated,
rollout and update programs joined by transfers otherwise, pipelining) are built by
:mod:`panda_rl.programs` from the trainer's pure functions.

Multi-host (``cluster.num_nodes > 1``): :func:`panda_rl.distributed.initialize_distributed` starts
``jax.distributed``; every process runs the same programs over the global devices, in the
same order; groups may span processes or live on some of them only; only process 0 logs
(:meth:`Placement.table` first); orbax writes checkpoints from all processes (each its own
shards).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from panda_rl.distributed import host_name, initialize_distributed
from panda_rl.config import PlacementError

Array = jax.Array
COMPONENTS = ("env", "rollout", "actor")
AXIS = "batch"  # the one mesh axis: the env batch (env, rollout) / the sample batch (actor)





# --------------------------------------------------------------------------------------
# Parsing.

_NAME = r"[A-Za-z_]+"
_ENTRY = re.compile(rf"\s*({_NAME}(?:\s*,\s*{_NAME})*)\s*:\s*(all|\d+(?:\s*-\s*\d+)?)\s*",
                    re.IGNORECASE)


def _fmt_range(ids: Sequence[int]) -> str:
  ids = sorted(ids)
  if len(ids) == 1:
    return str(ids[0])
  if ids == list(range(ids[0], ids[-1] + 1)):
    return f"{ids[0]}-{ids[-1]}"
  return ",".join(map(str, ids))


def _available(num_devices: int) -> str:
  return (f"{num_devices} devices available, ids 0-{num_devices - 1}" if num_devices > 1
          else "1 device available, id 0")


def _parse_range(value: Any, num_devices: int, group: str) -> Tuple[int, ...]:
  """"all" | "3" | "0-3" | int | (lo, hi) | range | list of ints -> device ids."""
  where = f"group {group!r}"
  if isinstance(value, str):
    text = value.strip().lower()
    if text == "all":
      return tuple(range(num_devices))
    m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", text)
    if not m:
      raise PlacementError(f"{where}: range {value!r} is not 'all', 'N' or 'LO-HI'")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
  elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    lo = hi = int(value)
  elif isinstance(value, range):
    ids = tuple(value)
    if not ids:
      raise PlacementError(f"{where}: empty device range {value!r}")
    lo, hi = min(ids), max(ids)
    if ids != tuple(range(lo, hi + 1)):
      raise PlacementError(f"{where}: device ranges must be contiguous, got {value!r}")
  elif (isinstance(value, (tuple, list)) and len(value) == 2
        and all(isinstance(v, (int, np.integer)) for v in value)):
    lo, hi = int(value[0]), int(value[1])
  else:
    raise PlacementError(f"{where}: cannot read device range {value!r} (use 'all', 'N', "
                         "'LO-HI', an int or a (lo, hi) pair)")
  if lo > hi:
    raise PlacementError(f"{where}: range {lo}-{hi} is empty (start > end)")
  if lo < 0 or hi >= num_devices:
    raise PlacementError(f"{where}: range {lo}-{hi} is outside the devices "
                         f"(ids 0-{num_devices - 1})")
  return tuple(range(lo, hi + 1))


def _entries(spec: Any) -> List[Tuple[str, Any]]:
  """(group, range) pairs of a string or mapping spec, unvalidated."""
  if isinstance(spec, Mapping) or hasattr(spec, "items"):
    return [(str(k), v) for k, v in spec.items()]
  if not isinstance(spec, str) or not spec.strip():
    raise PlacementError(f"expected a string like 'env,rollout,actor:all' or "
                         f"'env:0-3;rollout:4-7;actor:8-15' (or a dict), got {spec!r}")
  out, pos, text = [], 0, spec.strip()
  while pos < len(text):
    m = _ENTRY.match(text, pos)
    if not m:
      raise PlacementError(f"cannot parse {text[pos:]!r}: each entry is "
                           "'component[,component...]:range' with range 'all', 'N' or "
                           "'LO-HI', entries joined by ';'")
    out.append((m.group(1), m.group(2)))
    pos = m.end()
    if pos < len(text):
      if text[pos] not in ";,":
        raise PlacementError(f"expected ';' between entries at {text[pos:]!r}")
      pos += 1
  return out


def parse_component_placement(spec: Any, num_devices: int) -> Dict[str, Tuple[int, ...]]:
  """Parses a placement into ``{component: device ids}`` for env, rollout and actor.

  Args:
    spec: ``"env,rollout,actor:all"``, ``"env:0-3;rollout:4-7;actor:8-15"`` (also with
      ``,`` between entries), or a mapping ``{"env,rollout": "0-7", "actor": "all"}``.
    num_devices: the number of global devices (``jax.device_count()``).

  Raises:
    PlacementError: a syntax error, an unknown or missing component, a component named
      twice, or a range outside ``[0, num_devices)``; the message names the available
      device count.
  """
  groups: Dict[str, Tuple[int, ...]] = {}
  problems: List[str] = []
  try:
    entries = _entries(spec)
  except PlacementError as e:
    raise PlacementError(f"cluster.component_placement={spec!r}: {e}") from None
  for group, value in entries:
    names = [n.strip().lower() for n in group.split(",") if n.strip()]
    try:
      ids = _parse_range(value, num_devices, group)
    except PlacementError as e:
      problems.append(str(e))
      ids = ()
    for name in names:
      if name not in COMPONENTS:
        problems.append(f"unknown component {name!r} (components: {', '.join(COMPONENTS)})")
      elif name in groups:
        problems.append(f"component {name!r} is placed twice")
      else:
        groups[name] = ids
  missing = [c for c in COMPONENTS if c not in groups]
  if missing:
    problems.append(f"component(s) {', '.join(map(repr, missing))} not placed (every one of "
                    f"{', '.join(COMPONENTS)} needs a range, e.g. 'env,rollout,actor:all')")
  if problems:
    raise PlacementError(f"cluster.component_placement={spec!r} ({_available(num_devices)}):"
                         "\n  " + "\n  ".join(problems))
  return groups


# --------------------------------------------------------------------------------------
# The placement.


@dataclasses.dataclass(frozen=True)
class BatchSplit:
  """A batch of ``batch`` envs split over ``mesh``'s devices, inside a program.

  Called on a tree, it constrains every leaf with leading dimension ``batch`` to
  ``P("batch")`` over the mesh and the rest to replicated (``with_sharding_constraint``);
  :func:`panda_rl.evaluation.run_episodes` also steps those envs per device on ``mesh``
  (:func:`panda_rl.envs.sharded.shard_step`).
  """

  mesh: Mesh
  batch: int

  def __call__(self, tree: Any) -> Any:
    split, rep = NamedSharding(self.mesh, P(AXIS)), NamedSharding(self.mesh, P())
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(
            x, split if x.ndim and x.shape[0] == self.batch else rep), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class Placement:
  """A validated placement: device groups, meshes, shardings, pipeline stages.

  Attributes:
    devices: the global devices (``jax.devices()``); ids index into it.
    groups: ``{"env" | "rollout" | "actor": tuple of device ids}``.
    num_envs: B, the training env batch.
    pipeline_stages: k = ``rollout.pipeline_stage_num``.
    stage_block: envs kept together in one stage (GRPO's group size, else 1).
    spec: the placement as configured (for messages).
  """

  devices: Tuple[Any, ...]
  groups: Mapping[str, Tuple[int, ...]]
  num_envs: int
  pipeline_stages: int = 1
  stage_block: int = 1
  spec: Any = "env,rollout,actor:all"

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def single_device(self) -> bool:
    """One device in the whole run: the unsharded programs are used unchanged."""
    return len(self.devices) == 1

  @property
  def single_process(self) -> bool:
    """Every device of the run belongs to this one process (no ``jax.distributed``): its
    programs may be kept traced across runs (:mod:`panda_rl.program_cache`)."""
    return jax.process_count() == 1

  @property
  def collocated(self) -> bool:
    """env, rollout and actor on the same devices: one program per iteration."""
    return self.groups["env"] == self.groups["rollout"] == self.groups["actor"]

  @property
  def fused_rollout(self) -> bool:
    """env and rollout on the same devices: the rollout is one scanned program."""
    return self.groups["env"] == self.groups["rollout"]

  def size(self, component: str) -> int:
    return len(self.groups[component])

  @functools.cached_property
  def _meshes(self) -> Dict[Tuple[int, ...], Mesh]:
    out = {}
    for ids in self.groups.values():
      if ids not in out:
        # Auto axes: shardings propagate through jit as annotations (GSPMD), the
        # with_sharding_constraint / in_shardings style used here.
        out[ids] = jax.make_mesh((len(ids),), (AXIS,), axis_types=(AxisType.Auto,),
                                 devices=[self.devices[i] for i in ids])
    return out

  def mesh(self, component: str) -> Mesh:
    """The 1-D ``("batch",)`` mesh of a component (groups with equal ranges share one)."""
    return self._meshes[self.groups[component]]

  def replicated(self, component: str) -> NamedSharding:
    return NamedSharding(self.mesh(component), P())

  def batch_sharding(self, component: str, axis: int = 0) -> NamedSharding:
    """Sharded along dimension ``axis`` (the batch) over the component's devices."""
    return NamedSharding(self.mesh(component), P(*([None] * axis), AXIS))

  def state_shardings(self, abstract_state: Any, env_component: str = "env") -> Any:
    """Shardings of a TrainState: env state batch-sharded over ``env_component``'s
    devices, everything else (params, optimiser, normaliser, key, counters) replicated
    on the actor devices."""
    rep = self.replicated("actor")
    batch, env_rep = self.batch_sharding(env_component), self.replicated(env_component)
    tree = jax.tree.map(lambda _: rep, abstract_state)
    # Empty leaves (MJX's [B, 0] fields of a model without, e.g., equality constraints)
    # come back replicated from XLA whatever they are given: they are placed so.
    env = jax.tree.map(lambda x: batch if x.ndim and x.shape[0] == self.num_envs and x.size
                       else env_rep, abstract_state.env_state)
    return tree.replace(env_state=env)

  def batch_constraint(self, component: str, batch: int) -> Optional["BatchSplit"]:
    """For a batch of ``batch`` envs built inside a program (e.g. the evaluation's): a
    :class:`BatchSplit`, which splits every leaf with leading dimension ``batch`` over the
    component's devices and replicates the rest, and whose mesh lets the program step those
    envs per device; None on one device, or when ``batch`` does not divide over the devices
    (the program then runs that batch unsplit)."""
    n = self.size(component)
    if n == 1 or batch % n:
      return None
    return BatchSplit(self.mesh(component), batch)

  def sharded_env(self, env: Any) -> Any:
    """The batched training env stepped shard by shard on the env devices
    (:class:`panda_rl.envs.sharded.ShardedEnv`: no collective inside a step); ``env``
    itself on one env device."""
    if self.size("env") == 1:
      return env
    from panda_rl.envs.sharded import ShardedEnv

    return ShardedEnv(env, self.mesh("env"), AXIS)

  @property
  def minibatch_constraint(self) -> Optional[Callable[[Any], Any]]:
    """For ``sgd.minibatch_epochs(constrain=...)``: every minibatch split over the actor
    devices (leaves [num_minibatches, mb_size, ...]); None on a single device."""
    if self.single_device:
      return None
    sharding = NamedSharding(self.mesh("actor"), P(None, AXIS))
    return lambda tree: jax.lax.with_sharding_constraint(tree, sharding)

  def describe(self) -> str:
    kind = self.devices[0].platform
    groups: Dict[Tuple[int, ...], List[str]] = {}
    for c in COMPONENTS:
      groups.setdefault(self.groups[c], []).append(c)
    parts = [f"{','.join(names)} -> {kind} {_fmt_range(ids)}" for ids, names in groups.items()]
    mode = ("collocated: one program per iteration" if self.collocated else
            "env+rollout fused, separate update" if self.fused_rollout else
            "env and rollout on separate devices, exchanging actions/observations per step")
    return (f"placement: {'; '.join(parts)} ({mode}; {self.pipeline_stages} pipeline "
            f"stage{'s' if self.pipeline_stages > 1 else ''}; {jax.process_count()} "
            f"process{'es' if jax.process_count() > 1 else ''})")


  def table(self) -> str:
    """Where every component runs: component, global device ids, and for each run of them
    on one process its host, local ids and device kind (process 0 logs it at start)."""
    rows = [("component", "global ids", "process", "host", "local ids", "device kind")]
    for c in COMPONENTS:
      runs: List[List[Any]] = []  # [process, kind, global ids, local ids]
      for i in self.groups[c]:
        d = self.devices[i]
        local = getattr(d, "local_hardware_id", None)
        local = _local_id(d, self.devices) if local is None else local
        if runs and runs[-1][:2] == [d.process_index, d.device_kind]:
          runs[-1][2].append(i)
          runs[-1][3].append(local)
        else:
          runs.append([d.process_index, d.device_kind, [i], [local]])
      for proc, kind, ids, local_ids in runs:
        rows.append((c, _fmt_range(ids), str(proc), host_name(proc), _fmt_range(local_ids),
                     kind))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _local_id(device, devices) -> int:
  """Index of ``device`` among its process's devices (CPU devices have no hardware id)."""
  return [d for d in devices if d.process_index == device.process_index].index(device)


def _problems(groups: Mapping[str, Tuple[int, ...]], num_envs: int, num_steps: int,
              num_minibatches: int, stages: int, block: int) -> List[str]:
  """Everything about sizes and overlaps that cannot work, as messages."""
  out = []
  env, rollout, actor = groups["env"], groups["rollout"], groups["actor"]
  if env != rollout and set(env) & set(rollout):
    out.append(
        f"env ({_fmt_range(env)}) and rollout ({_fmt_range(rollout)}) partly overlap: they "
        "must be the same devices (one fused rollout program) or disjoint ones (the two "
        "exchange actions and observations every step); a device in both would serialise "
        "physics and inference of the same step")
  n_env, n_roll, n_act = len(env), len(rollout), len(actor)
  unit = n_env * stages * block
  if num_envs % unit:
    what = f"{n_env} env devices x {stages} pipeline stages"
    if block > 1:
      what += f" x {block} envs per group (algorithm.group_size)"
    out.append(f"env.train.num_envs={num_envs} does not divide over {what} = {unit}")
  if env != rollout and num_envs % (n_roll * stages):
    out.append(f"env.train.num_envs={num_envs} does not divide over {n_roll} rollout "
               f"devices x {stages} pipeline stages = {n_roll * stages} (each stage's "
               "observations are split over the rollout devices)")
  if num_envs % n_act:
    out.append(f"env.train.num_envs={num_envs} does not divide over the {n_act} actor "
               "devices (trajectories [T, B] are split along B)")
  samples = num_envs * num_steps
  if num_minibatches >= 1 and samples % num_minibatches == 0:
    mb = samples // num_minibatches
    if mb % n_act:
      out.append(f"a minibatch of {mb} samples (num_envs * num_steps / num_minibatches = "
                 f"{num_envs} * {num_steps} / {num_minibatches}) does not divide over the "
                 f"{n_act} actor devices (data-parallel update)")
  return out


def from_config(config: Any, devices: Optional[Sequence[Any]] = None,
                stage_block: int = 1) -> Placement:
  """Reads ``cluster.*`` and ``rollout.pipeline_stage_num`` into a validated Placement.

  Starts ``jax.distributed`` first when ``cluster.num_nodes > 1`` (device ranges are
  global). Nothing is compiled. ``stage_block``: envs kept together in a pipeline stage
  (the algorithm's, e.g. GRPO's group size).

  Raises:
    PlacementError: every problem found, with the available device count.
  """
  initialize_distributed(config)
  devices = tuple(jax.devices() if devices is None else devices)
  spec = config.cluster.component_placement
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  groups = parse_component_placement(spec, len(devices))
  stages = config.rollout.get("pipeline_stage_num", 1)
  if not isinstance(stages, (int, np.integer)) or isinstance(stages, bool) or stages < 1:
    raise PlacementError(f"rollout.pipeline_stage_num must be an int >= 1, got {stages!r}")
  block = int(stage_block)
  num_envs = int(config.env.train.num_envs)
  problems = _problems(groups, num_envs, int(config.rollout.num_steps),
                       int(config.algorithm.num_minibatches), int(stages), block)
  if problems:
    raise PlacementError(
        f"Placement cluster.component_placement={spec!r} with rollout.pipeline_stage_num="
        f"{stages} cannot work ({_available(len(devices))}):\n  " + "\n  ".join(problems))
  return Placement(devices=devices, groups=groups, num_envs=num_envs,
                   pipeline_stages=int(stages), stage_block=block, spec=spec)
