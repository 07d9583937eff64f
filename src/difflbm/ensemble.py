"""Ensembles: B independent 2D simulations advanced by one kernel launch per step.

A 2D lattice never moves along z, so B members of shape (nx, ny) stacked as the z axis of one
(nx, ny, B) grid stay independent: each z slice pulls only from itself. The member index runs
fastest in memory, so for B >= 32 a warp touches 32 members of one cell, coalesced. Members may
differ in geometry (masks), boundary values (wall, inlet, outlet), relaxation rate, force and solid
fraction; they must share the lattice, grid shape, precision, collision model and boundary kinds
(one generated kernel serves all).

Gradients: the loss of the stacked problem is the sum of the members' losses, and members do not
interact, so each member's part of the gradient equals the gradient of its own rollout.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import warp as wp

from . import kernels as K
from .adjoint import value_and_grad
from .problem import Parameters, Problem, State

__all__ = ["Ensemble"]


class Ensemble:
    """Stack ``members`` (2D :class:`Problem` objects of one shape and kind) into one problem.

    ``problem`` is the stacked problem, of shape (nx, ny, B): use it with :class:`Solver`,
    :func:`difflbm.adjoint.value_and_grad` and whole-domain losses (or region masks and targets of
    shape (nx, ny, B), member index last). ``parameters()``, ``state()``, ``split_*`` convert
    between the members' own layouts and the stacked one.
    """

    def __init__(self, members):
        members = list(members)
        if len(members) < 1:
            raise ValueError("members is empty; an ensemble needs at least one Problem")
        first = members[0]
        for n, m in enumerate(members):
            if not isinstance(m, Problem):
                raise TypeError(f"members[{n}]={m!r} is not a Problem")
            if m.lattice.dim != 2:
                raise ValueError(f"members[{n}] uses {m.lattice.name}; ensembles stack 2D lattices (D2Q9) only")
            for attr in ("shape", "precision", "inlet_windows"):
                if getattr(m, attr) != getattr(first, attr):
                    raise ValueError(f"members[{n}].{attr}={getattr(m, attr)!r} differs from members[0]'s "
                                     f"{getattr(first, attr)!r}; all members must share it")
            if str(m.device) != str(first.device):
                raise ValueError(f"members[{n}] is on {m.device}, members[0] on {first.device}")
            mine = dataclasses.replace(m.config, omega_field=False, force=K.FORCE_NONE, moving_walls=False)
            ref = dataclasses.replace(first.config, omega_field=False, force=K.FORCE_NONE, moving_walls=False)
            if mine.float16_collision != ref.float16_collision:
                raise ValueError(f"members[{n}].config.float16_collision={mine.float16_collision!r} differs from "
                                 f"members[0]'s {ref.float16_collision!r} (DIFFLBM_FP16_COLLISION when each was "
                                 "built); one kernel must serve all members")
            if mine != ref:
                raise ValueError(f"members[{n}] has another collision, boundary kind or periodicity than "
                                 f"members[0] ({mine} vs {ref}); one kernel must serve all members")
            if (m.force_mode == K.FORCE_NONE) != (first.force_mode == K.FORCE_NONE):
                raise ValueError(f"members[{n}] and members[0] disagree on having a body force")
        self.members = members
        self.count = len(members)
        self.problem = self._stack()

    # ------------------------------------------------------------------ building the stacked problem
    def _interleave(self, arrays):
        """Per-member arrays of shape (N, ...) -> stacked (N * B, ...), member index fastest."""
        return np.stack(arrays, axis=1).reshape((-1,) + arrays[0].shape[1:])

    def _stack(self) -> Problem:
        ms, B, first = self.members, self.count, self.members[0]
        N = first.cell_count
        p = Problem.__new__(Problem)
        p.lattice, p.collision, p.precision, p.device = first.lattice, first.collision, first.precision, first.device
        p.inlet_windows, p.boundaries = first.inlet_windows, []
        p.shape = first.shape + (B,)
        p.grid3 = first.shape + (B,)
        p.cell_count = N * B
        p.periodic3 = first.periodic3[:2] + (True,)
        # slot tables: each member's entries follow the previous members'
        inlet_off = np.cumsum([0] + [m.inlet_slots for m in ms])
        outlet_off = np.cumsum([0] + [m.outlet_slots for m in ms])
        wall_off = np.cumsum([0] + [len(m._walls) for m in ms])
        wslot_off = np.cumsum([0] + [m.wall_link_group_np.shape[0] for m in ms])
        codes, slots, solid_walls, wall_slots = [], [], [], []
        for b, m in enumerate(ms):
            codes.append(m.code_np)
            kind = (m.code_np >> np.uint32(K.KIND_SHIFT)).astype(np.int64)
            slot = m._arrays["slot"].astype(np.int64)
            slot = np.where((kind == K.KIND_VELOCITY) & (slot >= 0), slot + inlet_off[b], slot)
            slot = np.where((kind == K.KIND_PRESSURE) & (slot >= 0), slot + outlet_off[b], slot)
            slots.append(slot.astype(np.int32))
            solid_walls.append(m._arrays["solid_wall"] + int(wall_off[b]))
            ws = m.wall_slot_np if m.moving_walls else np.full(N, -1, np.int32)
            wall_slots.append(np.where(ws >= 0, ws + int(wslot_off[b]), -1).astype(np.int32))
        p.code_np = self._interleave(codes)
        p.moving_walls = any(m.moving_walls for m in ms)
        p.curved = first.curved
        p.has_outflow = first.has_outflow
        p.inlet_slots, p.outlet_slots = int(inlet_off[-1]), int(outlet_off[-1])
        p.wall_groups = {}
        p.force_mode = max(m.force_mode for m in ms)
        groups = [np.where(m.wall_link_group_np > 0, m.wall_link_group_np + int(wall_off[b]), 0)
                  if m.moving_walls else np.zeros_like(m.wall_link_group_np) for b, m in enumerate(ms)]
        p.wall_slot_np = self._interleave(wall_slots)
        p.wall_link_group_np = np.concatenate(groups).astype(np.int32)
        p._walls = np.concatenate([m._walls for m in ms])
        p._inlet = np.concatenate([m._inlet for m in ms if m.inlet_slots]) if p.inlet_slots else first._inlet
        p._outlet = np.concatenate([m._outlet for m in ms if m.outlet_slots]) if p.outlet_slots else first._outlet
        p._arrays = dict(slot=self._interleave(slots), solid_wall=self._interleave(solid_walls),
                         face_wall=first._arrays["face_wall"])
        # relaxation rate: one scalar if all members share it, else a stacked field
        omegas = [np.broadcast_to(np.asarray(m._omega, np.float64), m.shape).ravel() for m in ms]
        same_scalar = all(np.ndim(m._omega) == 0 for m in ms) and len({float(m._omega) for m in ms}) == 1
        p._omega = np.asarray(first._omega) if same_scalar else self._interleave(omegas).reshape(p.shape)
        if p.force_mode == K.FORCE_NONE:
            p._force = None
        else:
            fs = [np.broadcast_to(np.asarray(m._force, np.float64), m.shape + (2,)).reshape(N, 2) for m in ms]
            uniform = all(m.force_mode == K.FORCE_UNIFORM for m in ms) and all(np.array_equal(ms[0]._force, m._force)
                                                                                for m in ms)
            p._force = np.asarray(first._force) if uniform else self._interleave(fs).reshape(p.shape + (2,))
            p.force_mode = K.FORCE_UNIFORM if uniform else K.FORCE_FIELD
        if first._solid_fraction is not None:
            p._solid_fraction = self._interleave([m._solid_fraction.ravel() for m in ms]).reshape(p.shape)
        else:
            p._solid_fraction = None
        p._link_q = None
        dev = p.device
        dtype = K.wp_dtype(p.precision)
        p.code = wp.array(p.code_np, dtype=wp.uint32, device=dev)
        p.slot = wp.array(p._arrays["slot"], dtype=wp.int32, device=dev)
        p.solid_wall = wp.array(p._arrays["solid_wall"], dtype=wp.int32, device=dev)
        p.face_wall = wp.array(p._arrays["face_wall"], dtype=wp.int32, device=dev)
        p.wall_slot = wp.array(p.wall_slot_np, dtype=wp.int32, device=dev)
        p.wall_link_group = wp.array(p.wall_link_group_np, dtype=wp.int32, device=dev)
        if first.curved:
            lq = self._interleave([m.link_q.numpy().T for m in ms]).T
            p.link_q = wp.array(np.ascontiguousarray(lq), dtype=dtype, device=dev)
        else:
            p.link_q = first.link_q
        p.config = dataclasses.replace(first.config, omega_field=np.ndim(p._omega) > 0, force=p.force_mode,
                                       moving_walls=p.moving_walls, periodic=p.periodic3)
        p.solid = self._interleave([m.solid.ravel() for m in ms]).reshape(p.shape)
        p.inlet_groups, p.outlet_groups = [], []
        return p

    # ------------------------------------------------------------------ conversions
    def parameters(self) -> Parameters:
        """Stacked :class:`Parameters` holding every member's values."""
        return self.problem.parameters()

    def state(self, states) -> State:
        """Stacked :class:`State` from one :class:`State` per member."""
        if len(states) != self.count:
            raise ValueError(f"states has {len(states)} entries; the ensemble has {self.count} members")
        st = State.empty(self.problem)
        f = np.stack([s.f.numpy() for s in states], axis=2).reshape(self.problem.lattice.q, -1)
        st.f.assign(f)
        return st

    def split_populations(self, array) -> list:
        """Stacked populations (Q, N * B) -> one (Q, N) array per member."""
        a = np.asarray(array).reshape(self.problem.lattice.q, -1, self.count)
        return [np.ascontiguousarray(a[:, :, b]) for b in range(self.count)]

    def split_field(self, array) -> list:
        """A per-cell stacked array (N * B, ...) -> one (N, ...) array per member."""
        a = np.asarray(array)
        a = a.reshape((-1, self.count) + a.shape[1:])
        return [np.ascontiguousarray(a[:, b]) for b in range(self.count)]

    def value_and_grad(self, params: Parameters, initial: State, steps: int, loss, **kw):
        """Loss (summed over members) and per-member gradients of the stacked rollout.

        Returns ``(value, grads)`` where ``grads[b]`` is a dict with member b's gradients in its own
        layout: ``initial`` (Q, *shape), ``inlet_velocity`` (windows, its inlet cells, 3),
        ``wall_velocity`` (its groups, 3), ``omega`` and ``force`` (scalar-shaped if shared, else
        per cell) and ``solid_fraction``.
        """
        value, g = value_and_grad(self.problem, params, initial, steps, loss, **kw)
        ms = self.members
        out = [dict() for _ in ms]
        wrt = g._wrt
        if "initial" in wrt:
            for b, f in enumerate(self.split_populations(g.initial)):
                out[b]["initial"] = f.reshape((ms[b].lattice.q,) + ms[b].shape)
        if "inlet_velocity" in wrt and self.problem.inlet_slots:
            off = 0
            for b, m in enumerate(ms):
                out[b]["inlet_velocity"] = g.inlet_velocity[:, off: off + m.inlet_slots]
                off += m.inlet_slots
        if "outlet_density" in wrt and self.problem.outlet_slots:
            off = 0
            for b, m in enumerate(ms):
                out[b]["outlet_density"] = g.outlet_density[off: off + m.outlet_slots]
                off += m.outlet_slots
        if "wall_velocity" in wrt:
            off = 0
            for b, m in enumerate(ms):
                out[b]["wall_velocity"] = g.wall_velocity[off: off + len(m._walls)]
                off += len(m._walls)
        for name in ("omega", "force", "solid_fraction"):
            if name in wrt and getattr(g, name) is not None and getattr(g, name).shape[0] == self.problem.cell_count:
                for b, part in enumerate(self.split_field(getattr(g, name))):
                    out[b][name] = part
        return value, out
