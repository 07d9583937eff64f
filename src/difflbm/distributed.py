"""Domain decomposition in slabs along x on ``torch.distributed``: forward runs and gradients.

Every rank builds the global :class:`~difflbm.problem.Problem` (host-side, cheap) and a local view
of its slab of x-planes plus one halo plane on each side, sliced from the global arrays (cell codes,
slots, wall tables, per-cell parameters), so that boundary links at global faces are exactly the
global ones. The step kernel wraps every axis; on the local slab the wrap in x only ever connects
the two halo planes, whose results are discarded.

One step: exchange halo populations with the two ring neighbours (only the directions that cross
the cut: c_x = +1 to the right, c_x = -1 to the left), then the existing fused step kernel on the
extended slab; forward passes and the gradient's replays overlap the two (the planes that read
no halo are updated while the halos travel, :meth:`SlabDecomposition.step_exchanged`). The adjoint
of a step is the existing step adjoint (fused or Warp's) on the extended slab; what lands in the
halo planes is sent back and *added* to the owner's boundary planes, and the halo planes of the
adjoint are zeroed (overlapped with the inner planes' adjoint and the loss terms' where the
step adjoint is the fused one, :meth:`SlabDecomposition.adjoint_exchanged`). Losses count
owned cells only and are summed over ranks; parameter gradients are summed over ranks; per-cell
gradients stay per rank (``gather=True`` assembles them on every rank).

Files are written per rank (VTK pieces, restart pieces) and published by rank 0's index file (.pvti,
restart .json) only once every rank reports its piece in place, so a failed or dead rank never leaves
an index that looks complete. Ranks that built different global problems are found by comparing a
small signature before the first exchange. See docs/DISTRIBUTED.md.
"""

import contextlib
import copy
import json
import math
import os
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import warp as wp

from . import kernels as K
from . import losses as L
from .adjoint import (GRAD_TARGETS, Checkpointed, MemoryBudget, StoreAll, _finish_parameter_gradients,
                      _fused_step_adjoint, _moments_replay, _step_adjoint)
from .io import FIELDS, _target, macroscopic
from .problem import Parameters, Problem, State
from .solver import Solver, replay_launch

__all__ = ["DistributedGradients", "SlabDecomposition", "distributed_load_restart", "distributed_run",
           "distributed_save_restart", "distributed_value_and_grad", "distributed_write_vti", "slab_bounds"]


def _torch():
    import torch
    import torch.distributed as dist
    return torch, dist


def slab_bounds(nx: int, world: int) -> list[tuple[int, int]]:
    """(first x-plane, plane count) of every rank; uneven splits give the first ranks one plane more."""
    nx, world = int(nx), int(world)
    if world < 1:
        raise ValueError(f"world size {world} must be >= 1")
    if world > nx:
        raise ValueError(f"nx={nx} x-planes cannot be split over {world} ranks: every rank needs at least one "
                         f"plane; allowed: at most {nx} ranks")
    base, extra = divmod(nx, world)
    out, x0 = [], 0
    for r in range(world):
        n = base + (1 if r < extra else 0)
        out.append((x0, n))
        x0 += n
    return out


def _rank_world(group):
    _, dist = _torch()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _signature(problem: Problem) -> dict:
    """What every rank's global problem must agree on: its description (less the device), the step
    configuration and a checksum of the cell codes (boundaries, obstacles)."""
    d = problem.describe()
    d.pop("device")
    d["inlet_windows"] = problem.inlet_windows
    d["config"] = repr(problem.config)
    d["cell_codes_crc32"] = zlib.crc32(np.ascontiguousarray(problem.code_np))
    return d


# exceptions that cross ranks with their type (a rank that did not fail raises the same type)
_ERRORS = {c.__name__: c for c in (ValueError, TypeError, FileExistsError, FileNotFoundError, PermissionError)}


@cache
def _halo_kernels(dtype):
    """Warp kernels of the halo exchange for populations of ``dtype`` (one launch each, over
    (2P, S): the P directions that cross a cut each way times the S cells of a plane). ``dirs`` lists
    the c_x = +1 directions, then the c_x = -1 ones; plane p of the extended slab starts at p * S and
    the owned planes are 1..n. ``buf`` is (2, P, S): [0] the c_x = +1 directions (travelling right),
    [1] the c_x = -1 ones (travelling left)."""

    @wp.kernel(module="unique", enable_backward=False)
    def halo_pack(f: wp.array2d(dtype=dtype), dirs: wp.array(dtype=wp.int32), P: int, S: int, n: int,
                  buf: wp.array3d(dtype=dtype)):
        k, s = wp.tid()
        if k < P:
            buf[0, k, s] = f[dirs[k], n * S + s]  # last owned plane, to the right neighbour
        else:
            buf[1, k - P, s] = f[dirs[k], S + s]  # first owned plane, to the left neighbour

    @wp.kernel(module="unique", enable_backward=False)
    def halo_unpack(buf: wp.array3d(dtype=dtype), dirs: wp.array(dtype=wp.int32), P: int, S: int, n: int,
                    f: wp.array2d(dtype=dtype)):
        k, s = wp.tid()
        if k < P:
            f[dirs[k], s] = buf[0, k, s]  # from the left neighbour into the left halo
        else:
            f[dirs[k], (n + 1) * S + s] = buf[1, k - P, s]  # from the right neighbour into the right halo

    @wp.kernel(module="unique", enable_backward=False)
    def halo_wrap(f: wp.array2d(dtype=dtype), dirs: wp.array(dtype=wp.int32), P: int, S: int, n: int):
        # one rank: its own boundary planes fill its halos (the periodic wrap of the whole domain)
        k, s = wp.tid()
        if k < P:
            f[dirs[k], s] = f[dirs[k], n * S + s]
        else:
            f[dirs[k], (n + 1) * S + s] = f[dirs[k], S + s]

    @wp.kernel(module="unique", enable_backward=False)
    def halo_pack_back(f: wp.array2d(dtype=dtype), dirs: wp.array(dtype=wp.int32), P: int, S: int, n: int,
                       buf: wp.array3d(dtype=dtype)):
        # adjoint: what landed in the halos goes back to the planes it came from
        k, s = wp.tid()
        if k < P:
            buf[0, k, s] = f[dirs[k], s]  # left halo, back to the left neighbour
        else:
            buf[1, k - P, s] = f[dirs[k], (n + 1) * S + s]  # right halo, back to the right neighbour

    @wp.kernel(module="unique", enable_backward=False)
    def halo_add_back(buf: wp.array3d(dtype=dtype), dirs: wp.array(dtype=wp.int32), P: int, S: int, n: int,
                      f: wp.array2d(dtype=dtype)):
        k, s = wp.tid()
        if k < P:
            f[dirs[k], n * S + s] = f[dirs[k], n * S + s] + buf[0, k, s]  # from the right neighbour's left halo
        else:
            f[dirs[k], S + s] = f[dirs[k], S + s] + buf[1, k - P, s]  # from the left neighbour's right halo

    @wp.kernel(module="unique", enable_backward=False)
    def halo_wrap_back(f: wp.array2d(dtype=dtype), dirs: wp.array(dtype=wp.int32), P: int, S: int, n: int):
        k, s = wp.tid()
        if k < P:
            f[dirs[k], n * S + s] = f[dirs[k], n * S + s] + f[dirs[k], s]
        else:
            f[dirs[k], S + s] = f[dirs[k], S + s] + f[dirs[k], (n + 1) * S + s]

    @wp.kernel(module="unique", enable_backward=False)
    def halo_zero(f: wp.array2d(dtype=dtype), S: int, n: int):
        i, s = wp.tid()
        f[i, s] = dtype(0.0)
        f[i, (n + 1) * S + s] = dtype(0.0)

    return dict(pack=halo_pack, unpack=halo_unpack, wrap=halo_wrap, pack_back=halo_pack_back,
                add_back=halo_add_back, wrap_back=halo_wrap_back, zero=halo_zero)


# forward runs, replays and reverse passes overlap the halo exchange with the update of the planes
# that read no halo (SlabDecomposition.overlaps); False runs exchange-then-step (the tests compare
# the two bit for bit); "always" overlaps with one rank too, its "messages" copies of its own planes
# (a measuring aid: one GPU then runs the split launches of a multi-rank step, benchmarks/dist_bench.py
# --overlap-one-rank)
_OVERLAP = True


class SlabDecomposition:
    """The slab of ``problem`` owned by this rank, as a local :class:`Problem` with one halo plane each side.

    ``rank``/``world`` default to the ``torch.distributed`` group (or 0/1 without one). ``local`` is
    the extended problem (shape (n + 2, ny[, nz])); ``owned`` the slice of its owned planes.
    """

    def __init__(self, problem: Problem, group=None, rank: int | None = None, world: int | None = None):
        r, w = _rank_world(group)
        self.rank = r if rank is None else int(rank)
        self.world = w if world is None else int(world)
        self.group = group
        self.problem = problem
        if rank is None and world is None and self.world > 1:
            # first, before any check that could fail on some ranks only and leave the others waiting
            self._check_same_problem()
        nx, ny, nz = problem.grid3
        self.bounds = slab_bounds(nx, self.world)
        self.x0, self.n = self.bounds[self.rank]
        self.plane = ny * nz
        self.xs = np.array([(self.x0 - 1) % nx] + list(range(self.x0, self.x0 + self.n)) + [(self.x0 + self.n) % nx])
        self.left, self.right = (self.rank - 1) % self.world, (self.rank + 1) % self.world
        C = problem.lattice.velocities3()
        self.dirs_pos = [i for i in range(problem.lattice.q) if C[i][0] == 1]   # cross a cut going right
        self.dirs_neg = [i for i in range(problem.lattice.q) if C[i][0] == -1]  # going left
        self.local = self._local_problem()
        S, n = self.plane, self.n
        self.owned = slice(S, (n + 1) * S)

    # -------------------------------------------------------------- local problem
    def _x(self, arr, per_cell_trailing=()):
        """Slice a global per-cell array (flat (N, ...) or grid-shaped) to the extended slab, flat."""
        g = self.problem.grid3
        a = np.asarray(arr)
        a = a.reshape((g[0], g[1] * g[2]) + tuple(per_cell_trailing))
        return np.ascontiguousarray(a[self.xs].reshape((-1,) + tuple(per_cell_trailing)))

    def _local_problem(self) -> Problem:
        gp = self.problem
        lp = Problem.__new__(Problem)
        ext = (self.n + 2,) + gp.shape[1:]
        lp.lattice, lp.collision, lp.precision, lp.device = gp.lattice, gp.collision, gp.precision, gp.device
        lp.shape, lp.grid3 = ext, (self.n + 2,) + gp.grid3[1:]
        lp.cell_count = int(np.prod(ext))
        lp.inlet_windows, lp.boundaries = gp.inlet_windows, gp.boundaries
        lp._omega = gp._omega[self.xs] if np.ndim(gp._omega) else gp._omega
        lp.force_mode = gp.force_mode
        lp._force = gp._force[self.xs] if gp.force_mode == K.FORCE_FIELD else gp._force
        lp._solid_fraction = gp._solid_fraction[self.xs] if gp._solid_fraction is not None else None
        for name in ("wall_groups", "inlet_groups", "outlet_groups", "has_outflow", "moving_walls", "curved",
                     "inlet_slots", "outlet_slots", "_walls", "_inlet", "_outlet"):
            setattr(lp, name, getattr(gp, name))
        # the local x axis wraps (the kernel wraps every axis; cell codes carry the global faces)
        lp.periodic3 = (True,) + tuple(gp.periodic3[1:])
        # same generated kernel as the global problem: the generated step does not read cfg.periodic;
        # the native step uses it only to choose the cells that read their code, with the coded box
        # computed from the same tuple (native.coded_box), so any value is exact
        lp.config = gp.config
        lp.solid = gp.solid[self.xs]
        lp.code_np = self._x(gp.code_np)
        slot = self._x(gp._arrays["slot"])
        solid_wall = self._x(gp._arrays["solid_wall"])
        lp._arrays = {"slot": slot, "solid_wall": solid_wall, "face_wall": gp._arrays["face_wall"]}
        # halo cells get no wall term: their results are discarded, and no table entry is then
        # shared between an owned cell and a halo cell (with one rank they would be the same cell)
        wall_slot = self._x(gp.wall_slot_np) if gp.moving_walls else gp.wall_slot_np
        if gp.moving_walls:
            wall_slot[: self.plane] = -1
            wall_slot[-self.plane:] = -1
        lp.wall_slot_np, lp.wall_link_group_np = wall_slot, gp.wall_link_group_np
        lp._link_q = gp._link_q[:, self.xs] if gp._link_q is not None else None
        dev, Q = gp.device, gp.lattice.q
        lp.wall_slot = wp.array(wall_slot, dtype=wp.int32, device=dev)
        lp.wall_link_group = gp.wall_link_group
        lp.code = wp.array(lp.code_np, dtype=wp.uint32, device=dev)
        lp.slot = wp.array(slot, dtype=wp.int32, device=dev)
        lp.solid_wall = wp.array(solid_wall, dtype=wp.int32, device=dev)
        lp.face_wall = gp.face_wall
        dtype = K.wp_dtype(gp.precision)
        lq = lp._link_q.reshape(Q, -1) if lp._link_q is not None else np.full((Q, 1), 0.5)
        lp.link_q = wp.array(lq, dtype=dtype, device=dev)
        lp.distributed_slab = (self.rank, self.world, self.x0, self.n)
        return lp

    def per_cell(self, name: str) -> bool:
        """Whether parameter ``name`` has one entry per cell in this problem."""
        cfg = self.problem.config
        return {"omega": cfg.omega_field, "force": cfg.force == K.FORCE_FIELD, "solid_fraction": cfg.porosity}.get(name, False)

    def local_parameters(self, params: Parameters | None = None) -> Parameters:
        """The extended slab's :class:`Parameters` with the values of the global ``params``."""
        lp = Parameters(self.local)
        if params is None:
            return lp
        if params.problem is not self.problem:
            raise ValueError("params must belong to the decomposed problem")
        for name in Parameters.NAMES:
            v = getattr(params, name).numpy()
            if self.per_cell(name):
                v = self._x(v, v.shape[1:])
            getattr(lp, name).assign(v)
        return lp

    def local_state(self, initial=None, name: str = "initial") -> State:
        """The extended slab's :class:`State` from None (rest), a global State or (Q, *shape) array, this
        rank's owned slab (Q, n, ny[, nz]) (as ``distributed_run(gather=False)`` and
        :func:`distributed_load_restart` return it), or a State of ``self.local`` (copied on the device).
        ``name`` is the argument named in errors."""
        gp, Q = self.problem, self.problem.lattice.q
        if initial is None:
            return self.local.state()  # rest, cell by cell as gp.state() would give it
        st = State.empty(self.local)
        if isinstance(initial, State) and initial.problem is self.local:
            wp.copy(st.f, initial.f)
            return st
        stored = isinstance(initial, State)  # a State holds stored values; arrays are populations
        f = initial.f.numpy() if stored else np.asarray(initial)
        owned = (Q, self.n) + gp.shape[1:]
        if f.shape in ((Q,) + gp.shape, (Q, gp.cell_count)):
            ext = self._x(f.reshape(Q, -1).T, (Q,)).T
        elif f.shape == owned:
            # the halo planes start as copies of the boundary planes; the exchange before the first
            # step sets the populations that owned cells read from them
            o = f.reshape(Q, self.n, self.plane)
            ext = np.concatenate([o[:, :1], o, o[:, -1:]], axis=1).reshape(Q, -1)
        else:
            raise ValueError(f"{name} holds populations of shape {f.shape}; allowed: the global {(Q,) + gp.shape} "
                             f"or this rank's slab {owned}")
        st.f.assign(np.ascontiguousarray(ext if stored else self._stored(ext)).astype(st.f.numpy().dtype))
        return st

    def _stored(self, f: np.ndarray) -> np.ndarray:
        """Populations (Q, ...) as the state stores them: float16 storage keeps f - w in float16
        (computed in float32, the inverse of :meth:`populations`: stored -> populations -> stored
        gives back every finite float16 value bit for bit, checked for every value and weight of the
        three lattices; -0.0 comes back as +0.0, which computes the same); other precisions store
        the populations."""
        if self.problem.precision != "float16":
            return f
        f = np.asarray(f, np.float32)
        return (f - self._shift32(f.ndim)).astype(np.float16)

    def populations(self, stored: np.ndarray) -> np.ndarray:
        """Stored values (Q, ...) of a state of this problem as populations: float16 storage in
        float32 with w added back (as :meth:`State.populations`); others unchanged."""
        if self.problem.precision != "float16":
            return stored
        return stored.astype(np.float32) + self._shift32(stored.ndim)

    def _shift32(self, ndim: int) -> np.ndarray:
        """The storage shift w (float32) shaped to broadcast over (Q, ...) arrays of ``ndim`` axes."""
        p = self.problem
        shift = np.asarray(K.storage_shift(p.lattice.name, p.precision), np.float32)
        return shift.reshape((-1,) + (1,) * (ndim - 1))

    def owned_slab(self, f_ext: np.ndarray) -> np.ndarray:
        """This rank's owned planes of extended-slab populations (Q, cells), shape (Q, n, ny[, nz])."""
        gp = self.problem
        return np.ascontiguousarray(f_ext[:, self.owned]).reshape((gp.lattice.q, self.n) + gp.shape[1:])

    def advance(self, solver: Solver, state: State, scratch: State, params: Parameters, steps: int) -> State:
        """``steps`` steps of the slab from ``state`` (a halo exchange, then per step the fused step
        and the exchange of its result, :meth:`step_exchanged`), ping-ponging with ``scratch``;
        returns whichever of the two holds the result. Nothing leaves the device. Only the owned
        planes are results: the halo planes hold what the last exchange filled and, with the overlap,
        finite values of an earlier step in the directions no exchange fills."""
        if state.f.ptr == scratch.f.ptr:  # before any message is posted
            raise ValueError("scratch is the same buffer as state; advance needs two distinct states")
        a, b = state, scratch
        if steps:
            solver.update_wall_term(params)  # parameters are fixed during the call
            self.exchange(a.f)
        with self.recorded(solver):
            for t in range(int(steps)):
                self.step_exchanged(solver, a, b, params, solver.window(t, steps), first=t == 0)
                a, b = b, a
        return a

    def step_exchanged(self, solver: Solver, state_in: State, state_out: State, params: Parameters,
                       window: int = 0, first: bool = False, moments: wp.array | None = None):
        """One step ``state_in`` -> ``state_out`` (whose halos ``state_in`` must have from an
        exchange), then ``state_out``'s halos from the neighbours. With ``moments``, the step also
        stores each cell's (rho, u) there (:meth:`Solver.step_moments`; a gradient's moments replay).
        The moving-wall terms are as last set by :meth:`Solver.update_wall_term`.

        With more than one rank and at least three planes per rank (and ``_OVERLAP``) the exchange
        overlaps the update: the two boundary planes are updated, packed and posted, the planes that
        read no halo (2 .. n-1) are updated while they travel, then the halos are unpacked. The halo
        planes are then not updated (owned cells read only the directions the exchange fills there)
        except when ``first``, so that no plane is left as uninitialised memory. Otherwise: the step
        of the whole slab, then :meth:`exchange`. The owned planes are bit-identical either way."""
        S, n = self.plane, self.n
        if not self.overlaps():
            if moments is None:
                solver.step(state_in, state_out, params, window, update_walls=False)
            else:
                solver.step_moments(state_in, state_out, moments, params, window)
            self.exchange(state_out.f)
            return
        solver.step_cells(state_in, state_out, params, S, S, window, moments)
        solver.step_cells(state_in, state_out, params, n * S, S, window, moments)
        started = self._halo_start(state_out.f, back=False)
        solver.step_cells(state_in, state_out, params, 2 * S, (n - 2) * S, window, moments)
        if first:
            solver.step_cells(state_in, state_out, params, 0, S, window, moments)
            solver.step_cells(state_in, state_out, params, (n + 1) * S, S, window, moments)
        self._halo_finish(state_out.f, back=False, started=started)

    def adjoint_exchanged(self, adjoint_cells, adj: wp.array, then=None, overlap: bool = True):
        """The adjoint of a step into populations ``adj`` (Q, cells), then :meth:`reverse_exchange`.
        ``adjoint_cells(first, count)`` launches the step's adjoint over cells first .. first +
        count - 1 (a kernel that stores every entry it owns, ``step_adjoint_kernel(ranged=True)``;
        ``count`` None: all cells, any kernel). ``then()``, if given, runs after the whole adjoint
        and before the exchange's values are added: it may add to owned cells of ``adj`` but must
        not touch the halo planes (loss terms over owned cells, :meth:`_Scheduled.owned_only`).
        ``overlap=False``: adjoint, ``then()``, exchange, in that order (any adjoint, any terms).

        With the overlap (as :meth:`step_exchanged`), the halo and boundary planes (0, 1 and n,
        n + 1) are adjoined first: their threads are the only ones that store the halo entries the
        reverse exchange sends (a cell's adjoint goes to the populations it pulled, or to its own
        for bounce-back links and solid cells; the halo cells' own adjoint is zero, so what they
        store there is zero, but it is stored before the pack all the same). Those are packed and
        posted, planes 2 .. n-1 are adjoined while they travel, then the arrived values are added
        to the boundary planes and the halos zeroed. Bit-identical to adjoint-then-exchange."""
        S, n = self.plane, self.n
        if not (overlap and self.overlaps()):
            adjoint_cells(0, None)
            if then is not None:
                then()
            self.reverse_exchange(adj)
            return
        adjoint_cells(0, 2 * S)
        adjoint_cells(n * S, 2 * S)
        started = self._halo_start(adj, back=True)
        adjoint_cells(2 * S, (n - 2) * S)
        if then is not None:
            then()
        self._halo_finish(adj, back=True, started=started)

    def overlaps(self) -> bool:
        """Whether steps and step adjoints overlap the halo exchange with the update (more than one
        rank, or ``distributed._OVERLAP == "always"``; at least three planes per rank; ``_OVERLAP``)."""
        if _OVERLAP not in (True, False, "always"):
            raise ValueError(f"difflbm.distributed._OVERLAP={_OVERLAP!r}; allowed: True, False, 'always'")
        return bool(_OVERLAP and (self.world > 1 or _OVERLAP == "always") and self.n >= 3)

    # -------------------------------------------------------------- communication
    def _on_warp_stream(self):
        """Context in which torch's work (copies, NCCL's waits) goes to Warp's stream of this device:
        ordered with the step kernels without the host waiting for the device (no-op on the CPU)."""
        if not self.problem.device.is_cuda:
            return contextlib.nullcontext()
        torch, _ = _torch()
        stream = self.problem.device.stream
        if getattr(self, "_torch_stream", None) is None or self._torch_stream._warp_stream is not stream:
            self._torch_stream = wp.stream_to_torch(stream)
        return torch.cuda.stream(self._torch_stream)

    def _swap(self, sends):
        """Exchange with the ring neighbours. ``sends`` = [(tensor, to 'left'|'right', tag)];
        returns the received tensors in the same order (from the opposite neighbour, same tag)."""
        return self._swap_finish(self._swap_start(sends))

    def _swap_start(self, sends, outs=None):
        """Post the sends and receives of :meth:`_swap` and return without waiting for them; ``outs``
        (optional, one per send) are tensors to receive into where no host staging is needed."""
        torch, dist = _torch()
        if self.world == 1:
            return None, [t.clone() for t, _, _ in sends], None
        backend = dist.get_backend(self.group)
        stage = backend == "gloo" and sends and sends[0][0].is_cuda
        ops, recvs = [], []
        for j, (t, to, tag) in enumerate(sends):
            peer = self.right if to == "right" else self.left
            src = self.left if to == "right" else self.right
            out = outs[j] if outs is not None and not stage else torch.empty_like(t, device="cpu" if stage else t.device)
            ops.append(dist.P2POp(dist.isend, (t.cpu() if stage else t).contiguous(), self._global(peer), self.group, tag))
            ops.append(dist.P2POp(dist.irecv, out, self._global(src), self.group, tag))
            recvs.append(out)
        return dist.batch_isend_irecv(ops), recvs, sends[0][0].device

    def _swap_finish(self, started):
        reqs, recvs, device = started
        for req in reqs or ():
            req.wait()
        return recvs if device is None else [r.to(device) for r in recvs]

    def _global(self, r):
        _, dist = _torch()
        return dist.get_global_rank(self.group, r) if self.group is not None else r

    def _launch(self, kernel, dim, inputs):
        """A halo kernel's launch, replayed from a record inside :meth:`recorded` (solver.replay_launch)."""
        replay_launch(getattr(self, "_records", None), kernel, dim, inputs, self.problem.device)

    @contextlib.contextmanager
    def recorded(self, solver: Solver):
        """Within the block, the step launches of ``solver`` and the halo kernels' launches are packed
        once per distinct set of arrays and replayed after that, from the solver's records
        (:meth:`Solver.recorded_launches`): a step of the overlapped schedule is six to eight
        launches, and packing the step kernel's arguments each time cost about as much host time as
        an H200 spends on a 256^3 step. The records hold their arrays until the block ends."""
        outer = getattr(self, "_records", None)
        with solver.recorded_launches():
            self._records = solver._records
            try:
                yield
            finally:
                self._records = outer

    def _halo(self, f: wp.array):
        """Kernels, direction list and launch shape of the halo exchange of populations ``f``."""
        dev, P = self.problem.device, len(self.dirs_pos)
        if getattr(self, "_halo_dtype", None) != f.dtype:  # buffers built once per populations dtype
            self._halo_dtype = f.dtype
            self._halo_dirs = wp.array(np.array(self.dirs_pos + self.dirs_neg, dtype=np.int32), device=dev)
            self._halo_send = wp.empty((2, P, self.plane), dtype=f.dtype, device=dev)
            self._halo_recv = wp.empty((2, P, self.plane), dtype=f.dtype, device=dev)
            self._halo_torch = None  # their torch views, made at the first message
        return _halo_kernels(f.dtype), self._halo_dirs, P, (2 * P, self.plane)

    def _halo_tensors(self):
        """Zero-copy torch views of the send and receive buffers of :meth:`_halo` (made once)."""
        if self._halo_torch is None:
            self._halo_torch = (wp.to_torch(self._halo_send), wp.to_torch(self._halo_recv))
        return self._halo_torch

    def _halo_start(self, f: wp.array, back: bool):
        """Pack the planes of populations ``f`` that cross the cuts into ``_halo_send`` (``back``, the
        adjoint: its halo planes) and post them, [0] right and [1] left (``back``: [0] left, [1]
        right), with the receives of the opposite neighbours' into ``_halo_recv``; returns what
        :meth:`_halo_finish` waits for. More than one rank."""
        k, dirs, P, dim = self._halo(f)
        self._launch(k["pack_back" if back else "pack"], dim, [f, dirs, P, self.plane, self.n, self._halo_send])
        ts, tr = self._halo_tensors()
        first, second = ("left", "right") if back else ("right", "left")
        tags = (2, 3) if back else (0, 1)
        with self._on_warp_stream():
            return self._swap_start([(ts[0], first, tags[0]), (ts[1], second, tags[1])], outs=(tr[0], tr[1]))

    def _halo_finish(self, f: wp.array, back: bool, started):
        """Wait for :meth:`_halo_start`'s messages and put what arrived into ``f``: its halo planes
        (``back``: added to its boundary planes, then its halo planes zeroed)."""
        k, dirs, P, dim = self._halo(f)
        S, n = self.plane, self.n
        _, tr = self._halo_tensors()
        with self._on_warp_stream():
            for out, g in zip((tr[0], tr[1]), self._swap_finish(started)):
                if g.data_ptr() != out.data_ptr():
                    out.copy_(g)
        if back:
            self._launch(k["add_back"], dim, [self._halo_recv, dirs, P, S, n, f])
            self._launch(k["zero"], (f.shape[0], S), [f, S, n])
        else:
            self._launch(k["unpack"], dim, [self._halo_recv, dirs, P, S, n, f])

    def exchange(self, f: wp.array):
        """Fill the halo planes of populations ``f`` (Q, cells) from the neighbours' boundary planes:
        one kernel packs the planes that cross the cuts, one unpacks what arrived (one rank: one kernel
        copies its own planes)."""
        if self.world > 1:
            self._halo_finish(f, back=False, started=self._halo_start(f, back=False))
            return
        k, dirs, P, dim = self._halo(f)
        self._launch(k["wrap"], dim, [f, dirs, P, self.plane, self.n])

    def reverse_exchange(self, adj: wp.array):
        """Adjoint of :meth:`exchange`: halo values are added to the owners' boundary planes, halos zeroed.

        ``adj`` is (Q, cells) populations, or a per-cell array (cells,) / (cells, k).
        """
        S, n = self.plane, self.n
        if adj.ndim == 2 and adj.shape[0] == self.problem.lattice.q and adj.shape[1] == self.local.cell_count:
            if self.world > 1:
                self._halo_finish(adj, back=True, started=self._halo_start(adj, back=True))
                return
            k, dirs, P, dim = self._halo(adj)
            self._launch(k["wrap_back"], dim, [adj, dirs, P, S, n])
            self._launch(k["zero"], (adj.shape[0], S), [adj, S, n])
            return
        with self._on_warp_stream():  # per-cell field: every component of the halo cells goes back
            t = wp.to_torch(adj)
            got = self._swap([(t[0:S].contiguous(), "left", 4), (t[(n + 1) * S:].contiguous(), "right", 5)])
            t[n * S:(n + 1) * S] += got[0]
            t[S:2 * S] += got[1]
            t[0:S] = 0
            t[(n + 1) * S:] = 0

    def _comm_device(self) -> str:
        """Where collectives' tensors live: this rank's GPU for NCCL, else the host."""
        _, dist = _torch()
        if dist.get_backend(self.group) != "nccl":
            return "cpu"
        dev = self.problem.device
        return f"cuda:{dev.ordinal}" if dev.is_cuda else "cuda"

    def all_reduce(self, arr: np.ndarray) -> np.ndarray:
        """Sum of a host array over ranks (float64)."""
        torch, dist = _torch()
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64).copy())
        if self.world > 1:
            t = t.to(self._comm_device())
            dist.all_reduce(t, group=self.group)
        return t.cpu().numpy()

    def all_gather_json(self, obj) -> list:
        """``obj`` (JSON-serialisable, small) of every rank in rank order, on every rank."""
        torch, dist = _torch()
        if self.world == 1:
            return [json.loads(json.dumps(obj))]
        data = torch.frombuffer(bytearray(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)
        dev = self._comm_device()
        size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
        sizes = [torch.empty_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size, group=self.group)
        sizes = [int(s.item()) for s in sizes]
        buf = torch.zeros(max(sizes), dtype=torch.uint8, device=dev)
        buf[: data.numel()] = data.to(dev)
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf, group=self.group)
        return [json.loads(bytes(p.cpu().numpy()[:n]).decode()) for p, n in zip(parts, sizes)]

    def agree(self, error: BaseException | None, what: str):
        """Raise on every rank when any rank passes an ``error`` (a collective: every rank must call it).

        The exception names each failing rank and its message; it keeps the failing ranks' type when
        they agree on one of ValueError, TypeError, FileExistsError, FileNotFoundError,
        PermissionError, else it is a RuntimeError.
        """
        if self.world == 1:
            if error is not None:
                raise error
            return
        reports = self.all_gather_json(None if error is None else [type(error).__name__, str(error)])
        failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
        if not failed:
            return
        kinds = {kind for _, (kind, _) in failed}
        cls = _ERRORS.get(kinds.pop(), RuntimeError) if len(kinds) == 1 else RuntimeError
        raise cls(f"{what} failed on " + "; ".join(f"rank {r}: {msg}" for r, (_, msg) in failed)) from error

    def _check_same_problem(self):
        sigs = self.all_gather_json(_signature(self.problem))
        if all(s == sigs[0] for s in sigs):
            return
        keys = sorted({k for s in sigs for k in s if s.get(k) != sigs[0].get(k)})
        detail = "; ".join(f"{k}: " + ", ".join(f"rank {r} {s.get(k)!r}" for r, s in enumerate(sigs)) for k in keys)
        raise ValueError(f"the ranks built different global problems ({detail}); every rank must build the same "
                         "Problem (same shape, lattice, collision, precision, boundaries)")

    def gather_cells(self, owned: np.ndarray) -> np.ndarray:
        """Global per-cell array (cells first, flat) from every rank's owned part; on every rank."""
        torch, dist = _torch()
        if self.world == 1:
            return owned
        S = self.plane
        nmax = max(n for _, n in self.bounds)
        pad = np.zeros((nmax * S,) + owned.shape[1:], dtype=owned.dtype)
        pad[: owned.shape[0]] = owned
        t = torch.from_numpy(pad).to(self._comm_device())
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        return np.concatenate([p.cpu().numpy()[: n * S] for p, (_, n) in zip(parts, self.bounds)])

    def gather_populations(self, f_ext: np.ndarray) -> np.ndarray:
        """Global (Q, *shape) populations from every rank's extended (Q, cells) array."""
        gp = self.problem
        owned = np.ascontiguousarray(f_ext[:, self.owned].T)
        return self.gather_cells(owned).T.reshape((gp.lattice.q,) + gp.shape)

    # -------------------------------------------------------------- losses
    def local_loss_terms(self, loss: L.Loss) -> list:
        """The terms of ``loss`` restricted to owned cells, bound to the local problem (some ranks may
        get none of a term; the schedule of every term is the global one)."""
        out = []
        for term in loss.terms():
            part = self._local_term(term)
            if part is not None:
                out.append(part)
        return out

    def _owned_mask(self):
        m = np.zeros(self.local.shape, dtype=bool)
        m[1:-1] = True
        return m

    def _local_field(self, term, weight=None):
        t = copy.copy(term)
        region = self._owned_mask()
        if term.region is not None:
            region &= np.asarray(term.region)[self.xs]
        if not region.any():
            return None
        t.region = region
        if term.target is not None and isinstance(term, (L.VelocityMismatch, L.DensityMismatch)):
            t.target = np.asarray(term.target)[self.xs]
        if weight is not None:
            t.weight = weight
        return t.bind(self.local)

    def _local_term(self, term):
        gp = self.problem
        if isinstance(term, L.PressureDrop):
            parts = []
            for sub in (term.a, term.b):
                count = int(np.count_nonzero(np.asarray(sub.region)))
                part = self._local_field(sub, weight=term.weight / count)
                if part is not None:
                    parts.append(part)
            return _Scheduled(term, parts) if parts else None
        if isinstance(term, L.VelocityMismatchSeries):
            raise ValueError("loss term VelocityMismatchSeries is not supported by the slab decomposition (its "
                             "snapshots are not split per rank); use one VelocityMismatch per observed step")
        if isinstance(term, L._FieldLoss):
            part = self._local_field(term)
            return _Scheduled(term, [part]) if part is not None else None
        if isinstance(term, L.Probe):
            term.bind(gp)  # validates the cell
            x = term.cell[0]
            if not (self.x0 <= x < self.x0 + self.n):
                return None
            t = copy.copy(term)
            t.cell = (x - self.x0 + 1,) + tuple(term.cell[1:])
            return _Scheduled(term, [t.bind(self.local)])
        if isinstance(term, L.Drag):
            term.bind(gp)  # validates boundary and axis
            return _Scheduled(term, [_OwnedDrag(self, term)])
        raise ValueError(f"loss term {type(term).__name__} is not supported by the slab decomposition; "
                         "supported: KineticEnergy, DensitySquared, VelocityMismatch, DensityMismatch, DensitySum, "
                         "PressureDrop, Probe, Drag (a KernelLoss indexes global cells)")


class _Scheduled:
    """A loss term's global schedule with its local parts."""

    def __init__(self, term, parts):
        self.term, self.parts = term, parts

    def active(self, t, steps):
        return self.term.active(t, steps)

    def evaluate(self, problem, f, params, out):
        for p in self.parts:
            p._launch(problem, f, params, out, None)

    def adjoint(self, problem, f, params, adj_out, adj_f, adj_params):
        for p in self.parts:
            p._launch(problem, f, params, adj_out, (adj_f, adj_params))

    def owned_only(self) -> bool:
        """Whether the adjoint adds to owned cells' populations only: field terms and probes (their
        cells are owned ones), the drag of half-way walls (a cell's own populations); not the drag
        of curved walls (it reads a neighbour, which may be a halo cell)."""
        return not any(isinstance(p, _OwnedDrag) and p.curved for p in self.parts)


def _link_groups(problem: Problem) -> np.ndarray:
    """Wall group of every link of every cell as :func:`kernels.link_wall_group` computes it on the
    global grid (closed faces by coordinates, else the solid source's group); shape (Q, N)."""
    lat, D = problem.lattice, problem.lattice.dim
    sw = problem._arrays["solid_wall"].reshape(problem.shape)
    fw = problem._arrays["face_wall"]
    coords = np.indices(problem.shape)
    groups = np.zeros((lat.q,) + problem.shape, dtype=np.int32)
    big = 1 << 30
    for i, ci in enumerate(lat.velocities):
        if not ci.any():
            continue
        g = np.full(problem.shape, big, dtype=np.int64)
        src = [coords[a] - ci[a] for a in range(D)]
        out_any = np.zeros(problem.shape, dtype=bool)
        for a in range(D):
            if problem.periodic3[a]:
                continue  # periodic faces are not walls: the link wraps to the other side
            lo, hi = src[a] < 0, src[a] >= problem.shape[a]
            g = np.where(lo, np.minimum(g, fw[2 * a]), g)
            g = np.where(hi, np.minimum(g, fw[2 * a + 1]), g)
            out_any |= lo | hi
        wrapped = tuple(np.mod(src[a], problem.shape[a]) for a in range(D))
        groups[i] = np.where(out_any, g, sw[wrapped])
    return groups.reshape(lat.q, -1)


class _OwnedDrag:
    """:class:`losses.Drag` over the owned cells of a slab, with the link groups of the global grid."""

    def __init__(self, dec: SlabDecomposition, term):
        self.dec, self.term = dec, term
        gp = dec.problem
        groups = _link_groups(gp)
        loc = dec._x(groups.T, (gp.lattice.q,)).T
        self.groups = wp.array(np.ascontiguousarray(loc), dtype=wp.int32, device=gp.device)
        self.curved = gp.curved
        self.kernel = _owned_drag_kernel(gp.lattice.name, gp.precision, gp.curved, term.axis)

    def _launch(self, problem, f, params, out, adj):
        g = problem.grid3
        d = self.dec
        inputs = [f, problem.code, self.groups, problem.link_q, self.term.group, d.plane, g[0], g[1], g[2],
                  self.term.weight, out]
        dim = d.n * d.plane
        if adj is None:
            wp.launch(self.kernel, dim=dim, inputs=inputs, device=problem.device)
        else:
            wp.launch(self.kernel, dim=dim, inputs=inputs,
                      adj_inputs=[adj[0], None, None, None, 0, 0, 0, 0, 0, 0.0, out], adjoint=True,
                      device=problem.device)


@cache
def _owned_drag_kernel(lattice: str, precision: str, curved: bool, axis: int):
    ph = K.physics(lattice, precision)
    dtype, vec3, Q, C, OPP = ph["dtype"], ph["vec3"], ph["Q"], ph["C"], ph["OPP"]

    @wp.kernel(module="unique", module_options=K.MODULE_OPTIONS)
    def lbm_owned_drag(f: wp.array2d(dtype=dtype), code: wp.array(dtype=wp.uint32),
                       groups: wp.array2d(dtype=wp.int32), link_q: wp.array2d(dtype=dtype), group: int,
                       first: int, nx: int, ny: int, nz: int, weight: float, out: wp.array(dtype=wp.float64)):
        idx = wp.tid() + first
        cell = code[idx]
        total = vec3()
        if int(cell >> wp.uint32(K.KIND_SHIFT)) != K.KIND_SOLID:
            z = idx % nz
            y = (idx / nz) % ny
            x = idx / (ny * nz)
            for i in range(1, wp.static(Q)):
                cx = wp.static(C[i][0])
                cy = wp.static(C[i][1])
                cz = wp.static(C[i][2])
                if (cell >> wp.uint32(i)) & wp.uint32(1):
                    if groups[i, idx] == group:
                        fo = f[wp.static(OPP[i]), idx]
                        back = fo
                        if wp.static(curved):
                            q = link_q[i, idx]
                            if q < dtype(0.5):
                                nb = K.neighbour(x, y, z, -cx, -cy, -cz, nx, ny, nz)
                                back = dtype(2.0) * q * fo + (dtype(1.0) - dtype(2.0) * q) * f[wp.static(OPP[i]), nb]
                            else:
                                inv = dtype(0.5) / q
                                back = inv * fo + (dtype(1.0) - inv) * f[i, idx]
                        total -= (fo + back) * vec3(dtype(wp.static(C[i][0])), dtype(wp.static(C[i][1])),
                                                    dtype(wp.static(C[i][2])))
        wp.atomic_add(out, 0, wp.float64(total[wp.static(axis)]) * wp.float64(weight))

    return lbm_owned_drag


# ------------------------------------------------------------------ entry points
def _decomposition(problem, group) -> SlabDecomposition:
    """``problem`` as a decomposition: a SlabDecomposition as it is, else a Problem or factory, decomposed."""
    if isinstance(problem, SlabDecomposition):
        return problem
    problem = problem() if callable(problem) and not isinstance(problem, Problem) else problem
    if not isinstance(problem, Problem):
        raise TypeError(f"problem={problem!r} must be a Problem, a callable returning one, or a SlabDecomposition")
    return SlabDecomposition(problem, group=group)


def _setup(problem, initial, params, group):
    dec = _decomposition(problem, group)
    if callable(initial) and not isinstance(initial, State):
        initial = initial(dec.problem)
    if callable(params) and not isinstance(params, Parameters):
        params = params(dec.problem)
    return dec, initial, params


def distributed_run(problem, steps: int, initial=None, params=None, group=None, gather: bool = True):
    """Advance ``steps`` steps on this rank's slab; every rank of ``group`` must call it.

    ``problem`` is a :class:`Problem`, a factory ``() -> Problem`` (each rank builds the global
    problem) or a :class:`SlabDecomposition` (reused as it is); ``initial`` a global State, a
    (Q, *shape) array, this rank's owned slab (Q, n, ny[, nz]) (from ``gather=False`` or
    :func:`distributed_load_restart`), a State of ``problem.local`` when ``problem`` is a
    SlabDecomposition, a factory ``problem -> State`` or None (rest); ``params``
    global Parameters, a factory, or None. Returns the global populations (Q, *shape) on every rank
    with ``gather``, else this rank's owned slab (Q, n, ny[, nz]).
    """
    if int(steps) < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    dec, initial, params = _setup(problem, initial, params, group)
    lp = dec.local
    final = dec.advance(Solver(lp), dec.local_state(initial), State.empty(lp), dec.local_parameters(params),
                        int(steps))
    f = dec.populations(final.f.numpy())  # float16 storage: float32 populations, as State.populations
    return dec.gather_populations(f) if gather else dec.owned_slab(f)


class DistributedGradients:
    """Gradients of a distributed rollout in the global layout of :class:`Parameters` (summed over
    ranks), ``initial`` as (Q, *shape) when gathered, else this rank's slab (Q, n, ny[, nz]);
    per-cell parameter gradients likewise gathered or owned-only. Names not asked for are None."""

    def __init__(self, values: dict, wrt):
        self._values, self.wrt = values, tuple(wrt)

    def __getattr__(self, name):
        if name.startswith("_") or name not in GRAD_TARGETS:
            raise AttributeError(name)
        return self._values.get(name)


def distributed_value_and_grad(problem, steps: int, loss: L.Loss, initial=None, params=None, adjoint=None,
                               wrt=GRAD_TARGETS, step_adjoint: str = "auto", group=None, gather: bool = True):
    """Loss and gradients of a rollout decomposed in x-slabs; every rank of ``group`` must call it.

    Arguments as in :func:`distributed_run` and :func:`difflbm.adjoint.value_and_grad`. ``adjoint``:
    :class:`StoreAll` or :class:`Checkpointed` (default), applied per rank (each rank keeps the
    checkpoints of its own slab, halos included; segments are replayed with halo exchanges).
    Returns ``(value, DistributedGradients)`` with the same value on every rank.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    for name in wrt:
        if name not in GRAD_TARGETS:
            raise ValueError(f"wrt={name!r} is not differentiable; allowed: {', '.join(GRAD_TARGETS)}")
    if not isinstance(loss, L.Loss):
        raise TypeError(f"loss={loss!r} must be a difflbm.losses.Loss")
    if step_adjoint not in ("auto", "fused", "warp"):
        raise ValueError(f"step_adjoint={step_adjoint!r} is not allowed; allowed: 'auto', 'fused', 'warp'")
    adjoint = Checkpointed() if adjoint is None else adjoint
    if isinstance(adjoint, StoreAll):
        seg = max(steps, 1)
    elif isinstance(adjoint, Checkpointed):
        seg = int(adjoint.segment) if adjoint.segment else max(1, math.isqrt(max(steps - 1, 0)) + 1)
    elif isinstance(adjoint, MemoryBudget):
        raise ValueError("adjoint=MemoryBudget(...) is not supported by distributed_value_and_grad; "
                         "allowed: StoreAll(), Checkpointed(segment)")
    else:
        raise TypeError(f"adjoint={adjoint!r} is not a strategy; allowed: StoreAll(), Checkpointed()")
    seg = min(seg, max(steps, 1))
    dec, initial, params = _setup(problem, initial, params, group)
    problem = dec.problem
    if problem.precision == "float16":  # the same on every rank (the ranks' problems were compared)
        raise ValueError("precision='float16' is not supported by distributed_value_and_grad yet (the "
                         "slabs' adjoint states would need float32 buffers); use float32, or "
                         "difflbm.adjoint.value_and_grad on one device")
    supported = K.fused_adjoint_supported(problem.config)
    if step_adjoint == "fused" and not supported:
        raise ValueError("step_adjoint='fused' does not cover this problem (it needs BGK or TRT, no solid "
                         "fraction, no curved walls, no zero-gradient outflow); use 'warp' or 'auto'")

    lp = dec.local
    dev = lp.device
    lparams = dec.local_parameters(params)
    solver = Solver(lp)
    # without the omega / force gradient when not asked for (fewer registers, as in value_and_grad)
    want_force = "force" in wrt and lp.config.force != K.FORCE_NONE
    # ranged kernels where the reverse passes overlap the exchange (SlabDecomposition.adjoint_exchanged)
    ranged = dec.overlaps()
    fused = (K.step_adjoint_kernel(lp.config, omega_grad="omega" in wrt, force_grad=want_force, ranged=ranged)
             if supported and step_adjoint != "warp" else None)
    terms = dec.local_loss_terms(loss)

    # step and halo launches packed once per buffer and replayed (SlabDecomposition.recorded)
    with dec.recorded(solver):
        # ---- forward: states are kept after their halo exchange (what the step and the loss read)
        out = wp.zeros(1, dtype=wp.float64, device=dev)
        checkpoints = {}
        a, b = dec.local_state(initial), State.empty(lp)
        solver.update_wall_term(lparams)  # parameters are fixed during the rollout (forward, replays, adjoint)
        dec.exchange(a.f)
        for t in range(steps + 1):
            for term in terms:
                if term.active(t, steps):
                    term.evaluate(lp, a.f, lparams, out)
            if t == steps:
                break
            if t % seg == 0:
                checkpoints[t] = wp.clone(a.f)
            # with the overlap, the halo planes of later states differ from a whole-slab step's only in
            # directions no owned cell reads (finite values of an earlier step; their adjoint is zero)
            dec.step_exchanged(solver, a, b, lparams, solver.window(t, steps), first=t == 0)
            a, b = b, a
        final = a
        value = float(dec.all_reduce(out.numpy())[0])

        # ---- backward
        adj_out = wp.ones(1, dtype=wp.float64, device=dev)
        grads = lparams.zeros_like()
        adjs = [State.empty(lp), State.empty(lp)]
        scratch = State.empty(lp)
        for term in terms:
            if term.active(steps, steps):
                term.adjoint(lp, final.f, lparams, adj_out, adjs[0].f, grads)
        dec.reverse_exchange(adjs[0].f)
        adj_wall_term = wp.zeros_like(solver.wall_term)
        omega_cells = None
        if fused is not None and "omega" in wrt:
            omega_cells = grads.omega if lp.config.omega_field else wp.zeros(lp.cell_count, dtype=grads.omega.dtype,
                                                                             device=dev)
        force_cells = None
        if fused is not None and want_force:
            force_cells = grads.force if lp.config.force == K.FORCE_FIELD else wp.zeros(
                lp.cell_count, dtype=grads.force.dtype, device=dev)
        # the moments replay of value_and_grad where it is exact: a halo cell's stored (rho, u) come from
        # the same exchanged state the adjoint would gather from
        use_moments = _moments_replay(lp, "auto", fused is not None, "omega" in wrt, terms, steps)
        fused_m = (K.step_adjoint_kernel(lp.config, omega_grad=False, force_grad=want_force, moments=True,
                                         ranged=ranged) if use_moments else None)
        buffer = [State.empty(lp) for _ in range(min(seg, max(steps, 1)) if not use_moments else 3)]
        moms = [wp.empty((K.moment_rows(lp.config), lp.cell_count), dtype=K.wp_dtype(lp.precision), device=dev)
                for _ in range(max(min(seg, steps) - 1, 0))] if use_moments else []
        replayed = set()  # replay buffers written at least once

        def adjoin(kernel, state, cur, prev, t, moments=None):
            """Step t's adjoint cur -> prev as adjoint_exchanged's ``adjoint_cells``: the fused kernel
            (ranged where the reverse pass overlaps), else Warp's generated one over all cells."""
            if kernel is None:
                return lambda first, count: _step_adjoint(solver, state, cur, prev, lparams, grads,
                                                          solver.window(t, steps), scratch, wrt, adj_wall_term)
            return lambda first, count: _fused_step_adjoint(
                solver, kernel, state, cur, prev, lparams, grads, omega_cells, wrt, adj_wall_term, force_cells,
                solver.window(t, steps), moments=moments, first=first, count=count)

        for s0 in reversed(range(0, steps, seg)):
            e0 = min(s0 + seg, steps)
            wp.copy(buffer[0].f, checkpoints.pop(s0))
            if use_moments:
                x = buffer[0]
                for t in range(s0, e0 - 1):
                    y = buffer[1] if x is not buffer[1] else buffer[2]
                    # with the overlap the halo cells are stepped too (first=True), as without it: the
                    # adjoint reads their moments (and multiplies them by the halo's zero adjoint)
                    dec.step_exchanged(solver, x, y, lparams, solver.window(t, steps), first=True, moments=moms[t - s0])
                    x = y
                # no loss term is active inside the rollout here (_moments_replay's condition), so every
                # reverse step can overlap its exchange
                for t in reversed(range(s0, e0)):
                    cur, prev = adjs
                    prev.f.zero_()  # halo cells may leave entries of the extended slab unwritten
                    dec.adjoint_exchanged(adjoin(fused, x, cur, prev, t) if t == e0 - 1 else
                                          adjoin(fused_m, None, cur, prev, t, moms[t - s0]), prev.f)
                    adjs.reverse()
                continue
            for t in range(s0, e0 - 1):
                # first use of a replay buffer: its halo planes are stepped too, so that none keeps
                # the zeros of State.empty (rho = 0 would give u = 0/0 in the adjoint of a halo cell,
                # and NaN times its zero adjoint is NaN); later uses keep finite values of earlier steps
                y = buffer[t - s0 + 1]
                dec.step_exchanged(solver, buffer[t - s0], y, lparams, solver.window(t, steps),
                                   first=id(y) not in replayed)
                replayed.add(id(y))
            for t in reversed(range(s0, e0)):
                cur, prev = adjs
                prev.f.zero_()  # halo cells may leave entries of the extended slab unwritten
                active = [term for term in terms if term.active(t, steps)]

                def add_terms(state=buffer[t - s0], prev=prev, active=active):
                    for term in active:
                        term.adjoint(lp, state.f, lparams, adj_out, prev.f, grads)
                # the reverse exchange overlaps the fused adjoint, the loss terms adding to owned cells
                # after it; Warp's adjoint, or a term that may write halo entries (curved-wall drag):
                # adjoint, terms, then the exchange
                dec.adjoint_exchanged(adjoin(fused, buffer[t - s0], cur, prev, t), prev.f, then=add_terms,
                                      overlap=fused is not None and all(term.owned_only() for term in active))
                adjs.reverse()
        adj = adjs[0]

    # shared with value_and_grad, which also adds the losses' direct force / omega terms
    _finish_parameter_gradients(lp, lparams, grads, solver, wrt, adj_wall_term, omega_cells, force_cells)
    if lp.config.porosity and "solid_fraction" in wrt:
        dec.reverse_exchange(grads.solid_fraction)  # interior cells read the halo's solid fraction

    values = {}
    for name in GRAD_TARGETS:  # every rank runs the same collectives in the same order
        if name not in wrt:
            continue
        if name == "initial":
            f = adj.f.numpy()
            values[name] = dec.gather_populations(f) if gather else dec.owned_slab(f)
            continue
        arr = getattr(grads, name).numpy()
        if dec.per_cell(name):
            owned = arr[dec.owned]
            values[name] = dec.gather_cells(owned).astype(arr.dtype) if gather else owned
        else:
            values[name] = dec.all_reduce(arr).astype(arr.dtype)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} after {steps} steps")
    return value, DistributedGradients(values, wrt)


# ------------------------------------------------------------------ files per rank
RESTART_FORMAT = "difflbm distributed restart"
RESTART_VERSION = 1


def _piece_path(index: Path, rank: int, suffix: str) -> Path:
    return index.with_name(f"{index.stem}_{rank}{suffix}")


def _temporary(path: Path) -> Path:
    # beside the target, hidden, with the target's suffix (pyevtk adds the suffix itself)
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _publish(dec: SlabDecomposition, what: str, index: Path, piece: Path, write_piece, write_index, prepare=None):
    """Write this rank's ``piece`` and, on rank 0, the ``index`` naming every piece, in four
    collective stages; any failure raises on every rank and leaves no index:

    1. each rank runs ``prepare()`` (checks) and ``write_piece(tmp)`` under a temporary name;
    2. rank 0 removes an older index (it may name pieces about to be replaced);
    3. each rank renames its piece into place and confirms it exists;
    4. rank 0 writes the index under a temporary name and renames it.

    A rank that dies makes the next stage's collective fail (gloo) or time out (NCCL) on the others.
    """
    tmp = _temporary(piece)
    error = None
    try:
        if prepare is not None:
            prepare()
        write_piece(tmp)
    except Exception as err:  # noqa: BLE001 - any failure is reported to every rank by agree()
        error = err
    try:
        dec.agree(error, what)
        error = None
        try:
            if dec.rank == 0 and index.exists():
                index.unlink()
        except OSError as err:
            error = err
        dec.agree(error, what)
        try:
            os.replace(tmp, piece)
            if not piece.is_file():
                raise FileNotFoundError(f"{str(piece)!r} is missing after renaming it into place")
        except OSError as err:
            error = err
        dec.agree(error, what)
    finally:
        tmp.unlink(missing_ok=True)
    error = None
    if dec.rank == 0:
        tmp = _temporary(index)
        try:
            write_index(tmp)
            os.replace(tmp, index)
        except Exception as err:  # noqa: BLE001 - any failure is reported to every rank by agree()
            error = err
        finally:
            tmp.unlink(missing_ok=True)
    dec.agree(error, what)


def _owned_fields(dec: SlabDecomposition, f, fields) -> dict:
    """Cell data of the owned planes in VTK's order (x fastest), float64, flat: (cells,) for density,
    (cells * 3,) with the components of a cell together for velocity."""
    rho, u = macroscopic(dec.local, dec.local_state(f, "f"))
    grid = (dec.n,) + dec.problem.grid3[1:]
    data = {}
    if "density" in fields:
        data["density"] = rho[1:-1].reshape(grid).ravel(order="F").astype(np.float64)
    if "velocity" in fields:
        data["velocity"] = u[1:-1].reshape(grid + (3,)).transpose(2, 1, 0, 3).ravel().astype(np.float64)
    return data


def distributed_write_vti(path, problem, f, fields=FIELDS, spacing=1.0, group=None, overwrite: bool = False) -> str:
    """Write this rank's slab as a VTK ImageData piece and, on rank 0, the .pvti that joins the pieces.

    Every rank of ``group`` must call it. ``path``: the .pvti (``.pvti`` added when missing); pieces go
    beside it as ``<stem>_<rank>.vti`` with their global extents, so a viewer opens the .pvti as
    one dataset of the global grid (cell i spans [i, i + 1) * spacing, as :func:`difflbm.io.write_vti`).
    ``problem``: Problem, factory or SlabDecomposition; ``f``: what :meth:`SlabDecomposition.local_state`
    takes, usually this rank's slab from ``distributed_run(..., gather=False)``. The .pvti is written
    last, only when every piece is in place; any rank's failure raises on every rank. Returns the
    .pvti path on every rank.
    """
    from pyevtk.vtk import VtkFile, VtkImageData, VtkParallelFile, VtkPImageData

    dec = _decomposition(problem, group)
    index = Path(path)
    index = index if index.suffix == ".pvti" else index.with_name(index.name + ".pvti")
    piece = _piece_path(index, dec.rank, ".vti")
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    ny, nz = dec.problem.grid3[1:]
    start, end = (dec.x0, 0, 0), (dec.x0 + dec.n, ny, nz)
    origin = (0.0, 0.0, 0.0)

    def prepare():
        bad = [name for name in fields if name not in FIELDS]
        if bad or not fields:
            raise ValueError(f"fields={fields!r} contains unknown names {bad}; allowed: {', '.join(FIELDS)}")
        if not (np.isfinite(spacing) and spacing > 0):
            raise ValueError(f"spacing={spacing} must be positive")
        _target(piece, ".vti", overwrite, "distributed_write_vti")
        if dec.rank == 0:
            _target(index, ".pvti", overwrite, "distributed_write_vti")

    def write_piece(tmp):
        data = _owned_fields(dec, f, fields)
        w = VtkFile(str(tmp.with_suffix("")), VtkImageData)
        w.openGrid(start=start, end=end, origin=origin, spacing=(float(spacing),) * 3)
        w.openPiece(start=start, end=end)
        w.openData("Cell", scalars="density" if "density" in data else None,
                   vectors="velocity" if "velocity" in data else None)
        for name, values in data.items():
            # pyevtk's own vector path packs one value at a time; an interleaved flat array is one write
            ncomp = 3 if name == "velocity" else 1
            w.addHeader(name, values.dtype.name, values.size // ncomp, ncomp)
        w.closeData("Cell")
        w.closePiece()
        w.closeGrid()
        for values in data.values():
            w.appendData(values)
        w.save()

    def write_index(tmp):
        w = VtkParallelFile(str(tmp.with_suffix("")), VtkPImageData)
        w.openGrid(start=(0, 0, 0), end=dec.problem.grid3, origin=origin, spacing=(float(spacing),) * 3)
        w.openData("PCell", scalars="density" if "density" in fields else None,
                   vectors="velocity" if "velocity" in fields else None)
        for name in FIELDS:
            if name in fields:
                w.addHeader(name, np.dtype(np.float64), 3 if name == "velocity" else 1)
        w.closeData("PCell")
        for r, (x0, n) in enumerate(dec.bounds):
            w.addPiece((x0, 0, 0), (x0 + n, ny, nz), _piece_path(index, r, ".vti").name)
        w.closeGrid()
        w.save()

    _publish(dec, "distributed_write_vti", index, piece, write_piece, write_index, prepare)
    return str(index)


def _restart_header(dec: SlabDecomposition, step: int) -> dict:
    d = dec.problem.describe()
    d.pop("device")  # a restart written on GPUs loads on the CPU
    return {"format": RESTART_FORMAT, "version": RESTART_VERSION, "step": int(step), "world_size": dec.world,
            "problem": d, "slabs": [[x0, n] for x0, n in dec.bounds]}


def distributed_save_restart(path, problem, f, step: int, group=None, overwrite: bool = False) -> str:
    """Save every rank's owned populations and rank 0's index, so that the run resumes bit for bit.

    Every rank of ``group`` must call it. ``path``: the index (``.json`` added when missing), naming
    the step, world size, global problem and slab bounds; pieces go beside it as ``<stem>_<rank>.npz``
    holding this rank's owned populations (Q, n, ny[, nz]) in the storage dtype with the same header
    and its rank. ``f``: as :func:`distributed_write_vti`. The index is written last, only when every
    piece is in place. Returns the index path on every rank.
    """
    dec = _decomposition(problem, group)
    index = Path(path)
    index = index if index.suffix == ".json" else index.with_name(index.name + ".json")
    piece = _piece_path(index, dec.rank, ".npz")
    header = _restart_header(dec, step) if isinstance(step, (int, np.integer)) and step >= 0 else None

    def prepare():
        if header is None:
            raise ValueError(f"step={step!r} must be a non-negative integer")
        _target(piece, ".npz", overwrite, "distributed_save_restart")
        if dec.rank == 0:
            _target(index, ".json", overwrite, "distributed_save_restart")

    def write_piece(tmp):
        owned = dec.owned_slab(dec.local_state(f, "f").f.numpy())
        with open(tmp, "wb") as fh:
            np.savez(fh, f=owned, rank=np.int64(dec.rank), header=np.array(json.dumps(header, sort_keys=True)))

    def write_index(tmp):
        pieces = [_piece_path(index, r, ".npz").name for r in range(dec.world)]
        tmp.write_text(json.dumps(dict(header, pieces=pieces), indent=1, sort_keys=True) + "\n")

    _publish(dec, "distributed_save_restart", index, piece, write_piece, write_index, prepare)
    return str(index)


def _mismatch(stored: dict, want: dict) -> list[str]:
    return [f"{k}: file {stored.get(k)!r}, expected {want.get(k)!r}" for k in sorted(set(stored) | set(want))
            if stored.get(k) != want.get(k)]


def distributed_load_restart(path, problem, group=None):
    """Read this rank's piece of a restart written by :func:`distributed_save_restart`.

    Every rank of ``group`` must call it. Returns ``(f, step)``: this rank's owned populations
    (Q, n, ny[, nz]), to pass as ``initial`` to :func:`distributed_run` or
    :func:`distributed_value_and_grad`, and the stored step. Raises on every rank (ValueError, naming
    the file, the stored and the expected value) when the world size, the global problem (shape,
    lattice, collision, precision, periodicity) or the slab bounds differ, and FileNotFoundError when
    the index is missing (the save did not complete) or a piece is.
    """
    dec = _decomposition(problem, group)
    index = Path(path)
    index = index if index.suffix == ".json" else index.with_name(index.name + ".json")
    result, error = None, None
    try:
        result = _load_piece(dec, index)
    except Exception as err:  # noqa: BLE001 - any failure is reported to every rank by agree()
        error = err
    dec.agree(error, "distributed_load_restart")
    return result


def _load_piece(dec: SlabDecomposition, index: Path):
    if not index.is_file():
        raise FileNotFoundError(f"restart index {str(index)!r} does not exist (wrong path, or the save did not "
                                "complete)")
    try:
        stored = json.loads(index.read_text())
    except ValueError:
        stored = None
    if not isinstance(stored, dict) or stored.get("format") != RESTART_FORMAT:
        raise ValueError(f"{str(index)!r} is not a difflbm distributed restart index")
    want = _restart_header(dec, stored.get("step", 0))
    if stored.get("world_size") != dec.world:
        raise ValueError(f"restart {str(index)!r} was written by world_size={stored.get('world_size')} ranks; "
                         f"this run has world_size={dec.world}; resume with {stored.get('world_size')} ranks")
    diff = _mismatch(stored.get("problem", {}), want["problem"])
    if diff:
        raise ValueError(f"restart {str(index)!r} does not match the problem: " + "; ".join(diff))
    if stored.get("slabs") != want["slabs"]:
        raise ValueError(f"restart {str(index)!r} holds slabs {stored.get('slabs')}; this run expects {want['slabs']}")
    piece = index.with_name(stored["pieces"][dec.rank])
    if not piece.is_file():
        raise FileNotFoundError(f"restart piece {str(piece)!r} of rank {dec.rank} does not exist")
    with np.load(piece, allow_pickle=False) as z:
        if "f" not in z or "header" not in z or "rank" not in z:
            raise ValueError(f"{str(piece)!r} is not a difflbm distributed restart piece (needs f, rank, header)")
        header, rank, f = json.loads(str(z["header"])), int(z["rank"]), z["f"]
    diff = _mismatch(header, {k: stored[k] for k in want})
    if rank != dec.rank:
        diff.append(f"rank: file {rank}, expected {dec.rank}")
    if diff:
        raise ValueError(f"restart piece {str(piece)!r} does not match its index {str(index)!r}: " + "; ".join(diff))
    gp = dec.problem
    shape = (gp.lattice.q, dec.n) + gp.shape[1:]
    dtype = State.empty(dec.local).f.dtype  # storage dtype: a restart must be exact, no casts
    if f.shape != shape or f.dtype != wp.dtype_to_numpy(dtype):
        raise ValueError(f"restart piece {str(piece)!r} holds {f.dtype} populations of shape {f.shape}; "
                         f"expected {np.dtype(wp.dtype_to_numpy(dtype))} of shape {shape}")
    # populations as distributed_run returns them (float16 storage: float32, exact both ways)
    return dec.populations(f), int(stored["step"])
