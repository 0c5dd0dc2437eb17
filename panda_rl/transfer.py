"""Exact copies of arrays between device groups, on one process or across processes.

Why: in jax 0.9.2 a cross-process ``jax.device_put`` between two shardings only works when
both have the same number of devices and the same shard shapes, and only on backends with
cross-host transfers (XLA:CPU has none; see ``jax/_src/dispatch.py``,
``_is_supported_cross_host_transfer``). Collectives have no such limit: gloo on CPU, NCCL on
GPU and ICI on TPU all implement collective-permute across processes. So a transfer between
groups that span processes is ONE jitted program over the union of the source and the
destination devices:

* every leaf is cut along its split axis (the batch; axis 0 when both ends are replicated)
  into chunks of ``g`` rows, ``g`` the gcd of every shard boundary of both shardings;
* each destination device needs some chunks; it takes each from itself when it already holds
  it, else from a holder on its own process, else from a holder chosen round-robin;
* those (sender, receiver) pairs are scheduled greedily into rounds in which a device sends
  at most one chunk and receives at most one (a permutation), and each round is a
  ``dynamic_slice`` -> ``lax.ppermute`` -> masked ``dynamic_update_slice`` inside
  ``shard_map``. No arithmetic touches the data, so the copy is bit for bit.

The program's input is built from the source array's own buffers (no copy), with zeros on
union devices that hold no source shard; the destination array is built from the output's
buffers on the destination devices. A process with no device in the union runs nothing.
Every process issues the same transfers in the same order (they all run the same loop).

On one process the default is plain ``jax.device_put`` (XLA copies between local devices);
``method="collective"`` forces the collective program (the tests use it to check it on one
process too). XLA:CPU with gloo stalls when too many collective programs are queued at once,
so at most ``max_inflight`` transfer programs are in flight: the oldest is waited for first.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Array = jax.Array
_AXIS = "union"
METHODS = ("auto", "device_put", "collective")


class TransferError(ValueError):
  """A transfer this module cannot do (e.g. shardings split along several axes)."""


class _Plan(NamedTuple):
  """How one leaf moves: ``rounds`` of (sender pos, receiver pos, sender chunk, receiver
  chunk), positions into the union device list, chunks of ``chunk`` rows on ``axis``."""

  axis: int
  chunk: int
  src_local: Tuple[int, ...]
  dst_local: Tuple[int, ...]
  rounds: Tuple[Tuple[Tuple[int, int, int, int], ...], ...]


# --------------------------------------------------------------------------------------
# Planning (pure Python on shapes and shardings; cached).


def _split_axis(shape: Tuple[int, ...], *maps: Dict[Any, Tuple[slice, ...]]) -> int:
  """The one axis along which the shardings cut the array (0 if neither does)."""
  axes = set()
  for index_map in maps:
    for index in index_map.values():
      for dim, (sl, n) in enumerate(zip(index, shape)):
        if (sl.start or 0, n if sl.stop is None else sl.stop) != (0, n):
          axes.add(dim)
  if len(axes) > 1:
    raise TransferError(f"shardings split an array of shape {shape} along axes "
                        f"{sorted(axes)}; transfers support one split axis")
  return axes.pop() if axes else 0


def _rows(index_map, axis: int, n: int) -> Dict[Any, Tuple[int, int]]:
  out = {}
  for device, index in index_map.items():
    sl = index[axis]
    out[device] = (sl.start or 0, n if sl.stop is None else sl.stop)
  return out


def _pick_source(dst, holders: Sequence[Any], order: int):
  if dst in holders:
    return dst
  local = [d for d in holders if d.process_index == dst.process_index]
  pool = local or list(holders)
  return pool[order % len(pool)]


def _schedule(edges: List[Tuple[int, int, int, int]]) -> Tuple[Tuple, ...]:
  """Greedy: each edge into the first round where its sender and receiver are free."""
  rounds: List[List] = []
  busy: List[Tuple[set, set]] = []
  for edge in edges:
    s, d = edge[0], edge[1]
    for r, (senders, receivers) in enumerate(busy):
      if s not in senders and d not in receivers:
        break
    else:
      rounds.append([])
      busy.append((set(), set()))
      r = len(rounds) - 1
    rounds[r].append(edge)
    busy[r][0].add(s)
    busy[r][1].add(d)
  return tuple(tuple(r) for r in rounds)


@functools.lru_cache(maxsize=512)
def _plan(shape: Tuple[int, ...], src: NamedSharding, dst: NamedSharding,
          union: Tuple[Any, ...]) -> _Plan:
  src_map, dst_map = src.devices_indices_map(shape), dst.devices_indices_map(shape)
  axis = _split_axis(shape, src_map, dst_map)
  n = shape[axis]
  src_rows, dst_rows = _rows(src_map, axis, n), _rows(dst_map, axis, n)
  bounds = {b for lo_hi in (*src_rows.values(), *dst_rows.values()) for b in lo_hi}
  chunk = functools.reduce(math.gcd, bounds | {n}) or 1
  pos = {d: i for i, d in enumerate(union)}
  holders: Dict[int, List[Any]] = collections.defaultdict(list)
  for device, (lo, hi) in sorted(src_rows.items(), key=lambda kv: kv[0].id):
    for c in range(lo, hi, chunk):
      holders[c].append(device)
  edges = []
  for order, (device, (lo, hi)) in enumerate(sorted(dst_rows.items(), key=lambda kv: kv[0].id)):
    for c in range(lo, hi, chunk):
      source = _pick_source(device, holders[c], order)
      s_lo = src_rows[source][0]
      edges.append((pos[source], pos[device], (c - s_lo) // chunk, (c - lo) // chunk))
  return _Plan(axis, chunk, src.shard_shape(shape), dst.shard_shape(shape), _schedule(edges))


# --------------------------------------------------------------------------------------
# The program.


def _run_plan(x: Array, plan: _Plan, n_union: int) -> Array:
  """Inside shard_map: this device's destination shard (zeros where it receives none)."""
  i = jax.lax.axis_index(_AXIS)
  out = jnp.zeros(plan.dst_local, x.dtype)
  for rnd in plan.rounds:
    send, recv = np.zeros(n_union, np.int32), np.zeros(n_union, np.int32)
    mask = np.zeros(n_union, bool)
    for s, d, s_chunk, d_chunk in rnd:
      send[s], recv[d], mask[d] = s_chunk, d_chunk, True
    piece = jax.lax.dynamic_slice_in_dim(x, jnp.asarray(send)[i] * plan.chunk, plan.chunk,
                                         plan.axis)
    got = jax.lax.ppermute(piece, _AXIS, [(s, d) for s, d, _, _ in rnd])
    placed = jax.lax.dynamic_update_slice_in_dim(out, got, jnp.asarray(recv)[i] * plan.chunk,
                                                 plan.axis)
    out = jnp.where(jnp.asarray(mask)[i], placed, out)
  return out


def _spec(axis: int) -> P:
  return P(*([None] * axis), _AXIS)


@functools.lru_cache(maxsize=256)
def _program(union: Tuple[Any, ...], plans: Tuple[_Plan, ...]):
  mesh = Mesh(np.array(union, dtype=object), (_AXIS,))
  specs = tuple(_spec(p.axis) for p in plans)

  def body(*xs):
    return tuple(_run_plan(x, p, len(union)) for x, p in zip(xs, plans))

  return mesh, jax.jit(jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=specs))


def _union_shape(local: Tuple[int, ...], axis: int, n: int) -> Tuple[int, ...]:
  return tuple(s * n if d == axis else s for d, s in enumerate(local))


@functools.lru_cache(maxsize=1024)
def _zeros(shape: Tuple[int, ...], dtype, device) -> Array:
  return jax.device_put(np.zeros(shape, dtype), device)


def _union_input(x: Array, plan: _Plan, mesh: Mesh) -> Array:
  """x's buffers (zeros on union devices it does not cover) as one array on the union.
  Scalars travel as shape (1,): their buffers are reshaped here, device by device (a
  reshape of the global array would be a program over every process)."""
  held = {s.device: s.data for s in x.addressable_shards}
  if x.ndim == 0:
    held = {d: b.reshape(1) for d, b in held.items()}
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  bufs = [held[d] if d in held else _zeros(plan.src_local, x.dtype, d) for d in local]
  shape = _union_shape(plan.src_local, plan.axis, mesh.size)
  return jax.make_array_from_single_device_arrays(
      shape, NamedSharding(mesh, _spec(plan.axis)), bufs, dtype=x.dtype)


def _destination(out: Optional[Array], shape, dst: NamedSharding, dtype) -> Array:
  """The destination array from the program output's buffers on the destination devices
  (``out`` None: this process holds none of them)."""
  held = {} if out is None else {s.device: s.data for s in out.addressable_shards}
  bufs = [held[d] for d in sorted(dst.addressable_devices, key=lambda d: d.id)]
  if shape == ():
    bufs = [b.reshape(()) for b in bufs]
  return jax.make_array_from_single_device_arrays(shape, dst, bufs, dtype=dtype)


# --------------------------------------------------------------------------------------
# The mover.


class Mover:
  """Moves pytrees of arrays to target shardings, exactly, across processes if needed.

  ``move(tree, shardings)``: ``shardings`` is one sharding or a tree (prefix) of them.
  Leaves already in their target sharding are returned as they are.
  """

  def __init__(self, method: str = "auto", max_inflight: int = 8):
    if method not in METHODS:
      raise TransferError(f"method must be one of {METHODS}, got {method!r}")
    self.method, self.max_inflight = method, max_inflight
    self._inflight: collections.deque = collections.deque()
    # Benchmarks: a list makes every transfer blocking and appends its seconds (inputs ready
    # -> outputs ready), so the transfers' own cost can be told from the overlapped work.
    self.timings: "List[float] | None" = None

  def _collective(self) -> bool:
    if self.method == "auto":
      return jax.process_count() > 1
    return self.method == "collective"

  def __call__(self, tree: Any, shardings: Any) -> Any:
    if self.timings is None:
      return self._move(tree, shardings)
    import time

    jax.block_until_ready(tree)
    t0 = time.perf_counter()
    out = jax.block_until_ready(self._move(tree, shardings))
    self.timings.append(time.perf_counter() - t0)
    return out

  def _move(self, tree: Any, shardings: Any) -> Any:
    if isinstance(shardings, jax.sharding.Sharding):
      shardings = jax.tree.map(lambda _: shardings, tree)
    leaves, treedef = jax.tree.flatten(tree)
    targets = treedef.flatten_up_to(shardings)
    out = list(leaves)
    collective, local = [], []
    for i, (x, dst) in enumerate(zip(leaves, targets)):
      if x.sharding == dst:
        continue
      (collective if self._collective() else local).append(i)
    if local:
      moved = jax.device_put([leaves[i] for i in local], [targets[i] for i in local])
      for i, y in zip(local, moved):
        out[i] = y
    groups: Dict[Tuple, List[int]] = collections.defaultdict(list)
    for i in collective:
      if leaves[i].size == 0:  # nothing to send (XLA does not shard empty arrays)
        out[i] = _empty(leaves[i], _as_named(targets[i]))
      else:
        groups[_union(leaves[i].sharding, targets[i])].append(i)
    for union, idx in groups.items():
      for i, y in zip(idx, self._move_group(union, [leaves[i] for i in idx],
                                            [targets[i] for i in idx])):
        out[i] = y
    return jax.tree.unflatten(treedef, out)

  def _move_group(self, union, xs: List[Array], dsts: List[Any]) -> List[Array]:
    shapes = [tuple(x.shape) for x in xs]
    dsts = [_as_named(d) for d in dsts]
    plans = tuple(_plan(shape or (1,), _as_named(x.sharding), d, union)
                  for shape, x, d in zip(shapes, xs, dsts))
    mesh, program = _program(union, plans)
    outs: Sequence[Optional[Array]] = [None] * len(xs)
    if any(d.process_index == jax.process_index() for d in union):
      outs = program(*[_union_input(x, p, mesh) for x, p in zip(xs, plans)])
      self._throttle(outs)
    return [_destination(o, shape, d, x.dtype)
            for o, shape, d, x in zip(outs, shapes, dsts, xs)]

  def _throttle(self, outs) -> None:
    self._inflight.append(outs[0])
    while len(self._inflight) > self.max_inflight:
      _wait_for(self._inflight.popleft())

  def wait(self) -> None:
    """Blocks until every transfer issued so far has finished."""
    while self._inflight:
      _wait_for(self._inflight.popleft())


def _wait_for(x: Array) -> None:
  # A result already donated to a later program (the update donates its state) was
  # consumed by it: nothing left to wait for.
  if not x.is_deleted():
    x.block_until_ready()


def _empty(x: Array, dst: NamedSharding) -> Array:
  shape = tuple(x.shape)
  # fresh buffers (not _zeros' cached ones): the result may be donated later
  bufs = [jax.device_put(np.zeros(dst.shard_shape(shape), x.dtype), d)
          for d in sorted(dst.addressable_devices, key=lambda d: d.id)]
  return jax.make_array_from_single_device_arrays(shape, dst, bufs, dtype=x.dtype)


def _as_named(sharding) -> NamedSharding:
  if isinstance(sharding, NamedSharding):
    return sharding
  if isinstance(sharding, jax.sharding.SingleDeviceSharding):
    device, = sharding.device_set
    return NamedSharding(Mesh(np.array([device], dtype=object), ("single",)), P())
  raise TransferError(f"cannot plan a transfer for sharding {sharding!r}")


def _union(src, dst) -> Tuple[Any, ...]:
  return tuple(sorted(set(src.device_set) | set(dst.device_set), key=lambda d: d.id))


def everywhere() -> NamedSharding:
  """Replicated on every device of the run: what every process can read."""
  devices = jax.devices()
  return NamedSharding(Mesh(np.array(devices, dtype=object), ("all",)), P())


def _spans_processes(sharding) -> bool:
  return len({d.process_index for d in sharding.device_set}) == jax.process_count()


def global_sharding(x: Any) -> Any:
  """``x``'s sharding if its devices reach every process, else one over every device (split
  along axis 0 where it divides, else replicated): what a multi-process checkpoint needs
  (orbax refuses arrays that live on one process of several)."""
  if _spans_processes(x.sharding):
    return x.sharding
  devices = jax.devices()
  mesh = Mesh(np.array(devices, dtype=object), ("all",))
  split = bool(x.ndim) and x.shape[0] % len(devices) == 0 and not x.sharding.is_fully_replicated
  return NamedSharding(mesh, P("all") if split else P())


def fetch(tree: Any, mover: "Mover | None" = None) -> Any:
  """Host (numpy) values of a pytree of arrays, on every process (all of them must call it,
  in the same order). With several processes, leaves that are not replicated over devices
  of every process are first copied to every device (a collective); then each process
  reads its own replica."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  leaves, treedef = jax.tree.flatten(tree)
  far = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not (
      _spans_processes(x.sharding) and x.sharding.is_fully_replicated)]
  if far:
    mover = mover or Mover()
    for i, y in zip(far, mover([leaves[i] for i in far], everywhere())):
      leaves[i] = y
  return jax.tree.unflatten(treedef, [np.asarray(x.addressable_data(0))
                                      if isinstance(x, jax.Array) else x for x in leaves])
