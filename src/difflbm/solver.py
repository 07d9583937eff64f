"""The stepper: advances a :class:`State` by fused kernel launches; holds no per-step data."""

from __future__ import annotations

import contextlib
import struct
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import warp as wp

from . import kernels as K
from . import native as N
from .problem import Parameters, Problem, State

__all__ = ["Solver", "DivergenceError"]


class DivergenceError(FloatingPointError):
    """The simulation produced a non-finite population; ``step`` and ``cell`` say where first."""

    def __init__(self, step: int, cell: tuple, direction: int):
        self.step, self.cell, self.direction = step, cell, direction
        super().__init__(f"simulation diverged: non-finite population at step {step}, cell {cell}, "
                         f"direction {direction}; lower the velocity or raise the resolution")


def launch_key(kernel, dim, block_dim, args):
    """A hashable key under which a launch of ``kernel`` with these arguments packs the same
    parameters: arrays by pointer, shape, strides, dtype and gradient pointer (a fresh view of the
    same memory gives the same key), floats by their bits (0.0 and -0.0 differ), other values by
    type and value. None when an argument is not hashable (such launches are not recorded)."""
    key = [kernel, dim, block_dim]
    for a in args:
        if isinstance(a, wp.array):
            key.append((a.ptr, a.shape, a.strides, a.dtype, a.grad.ptr if a.grad is not None else None))
        elif isinstance(a, float):
            key.append((float, struct.pack("<d", a)))
        else:
            key.append((type(a), a))
    key = tuple(key)
    try:
        hash(key)
    except TypeError:
        return None
    return key


MAX_RECORDS = 512  # recorded launches kept per loop, least recently used dropped first (replay_launch)


def replay_launch(records: OrderedDict | None, kernel, dim, inputs, device, block_dim: int | None = None):
    """``wp.launch(kernel, dim, inputs, ...)``; with ``records`` (an OrderedDict) each distinct
    launch is packed once (``record_cmd``) and replayed from there: about a tenth of the host time of
    a launch of the step's 30-odd arguments. The records hold their arrays: keep ``records`` for
    one loop over buffers that live that long (past MAX_RECORDS the least recently used is dropped).
    Replays are forward launches outside Warp's Tape (which none of the package's kernels use)."""
    if records is not None:
        key = launch_key(kernel, dim, block_dim, inputs)
        if key is not None:
            cmd = records.get(key)
            if cmd is None:
                cmd = wp.launch(kernel, dim=dim, inputs=inputs, device=device, block_dim=block_dim,
                                record_cmd=True)
                if cmd is None:  # nothing to launch (an empty grid)
                    return
                if len(records) >= MAX_RECORDS:
                    records.popitem(last=False)
                records[key] = cmd
            else:
                records.move_to_end(key)
            cmd.launch()
            return
    wp.launch(kernel, dim=dim, inputs=inputs, device=device, block_dim=block_dim)


class _WallRows(NamedTuple):
    """The native step's moving-wall terms as a table of distinct rows (Solver._wall_rows)."""

    wall_slot: wp.array  # the problem's wall-slot array the table was built for
    wall_link_group: wp.array  # and its wall-link groups
    row: wp.array  # per cell: the index into groups (-1 without a moving-wall link)
    groups: wp.array  # the distinct rows of wall_link_group (every cell of a wall's face shares one)
    terms: wp.array | None  # their bounce-back terms (the Solver's own)
    fresh: bool  # whether update_wall_term filled terms for this table


class Solver:
    """Advances states of ``problem``: ``step(state_in, state_out, params, t)`` with distinct buffers."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.kernel = K.step_kernel(problem.config)
        # the forward step: native per-cell body where it covers the configuration (bit-identical to
        # the Warp-generated kernel, faster; difflbm.native), else the Warp-generated kernel
        self.native_step = (N.native_step_enabled()
                            and N.native_step_unsupported(problem.config, problem.cell_count) is None)
        # the grid and coded box as compile-time constants of the native step (CUDA, where measured), and
        # its form (two cells per thread, link-free loads) by (stores moments, ranged), fixed here
        # (DIFFLBM_NATIVE_CONSTANTS, DIFFLBM_NATIVE_FORM; difflbm.native.native_form)
        self._constants = self.native_step and N.native_constants_enabled(problem.device, problem.config)
        # with the constants, whether any cell is solid (DIFFLBM_NATIVE_SOLID_FLAG)
        self._solid_flag = N.native_solid_flag_enabled()
        # and whether its codes come from its faces alone (DIFFLBM_NATIVE_FACE_CODES)
        self._face_codes = N.native_face_codes_enabled()
        cuda = wp.get_device(problem.device).is_cuda
        self._forms = ({(m, r): N.native_form(problem.config, problem.cell_count, ranged=r, moments=m,
                                              constants=self._constants, cuda=cuda)
                        for m in (False, True) for r in (False, True)} if self.native_step else None)
        self._variants = {}  # forward kernels by (stores moments, ranged), built on first use
        self._records = None  # recorded step launches while recorded_launches() is active
        self._swapped = {}  # (kernel, form) -> (code array, the kernel _launch runs instead)
        self.forward_kernel = self._forward_variant(False, False)
        self._check = K.finite_check_kernel(problem.precision)
        self._first = wp.zeros(1, dtype=wp.int64, device=problem.device)
        # moving-wall terms per boundary link, derived from the parameters at every step
        self.wall_term = wp.zeros(problem.wall_link_group.shape, dtype=K.wp_dtype(problem.precision),
                                  device=problem.device)
        self._wall_kernel = K.wall_term_kernel(problem.lattice.name, problem.precision)
        # the native step's wall terms as a table of distinct rows (unless DIFFLBM_NATIVE_WALL_ROWS=0):
        # (wall-slot array it was built for, per-cell row, distinct group rows, their terms, fresh);
        # built here, not at the first step, which may be inside a CUDA graph capture
        self._wall_rows_on = N.native_wall_rows_enabled() and self.native_step and problem.moving_walls
        self._rows = None
        if self._wall_rows_on:
            self._wall_rows()

    @contextlib.contextmanager
    def recorded_launches(self):
        """Within the block, each distinct step launch (same kernel, cell range and arrays) is packed
        once and replayed after that (:func:`replay_launch`): loops that launch many steps on the
        same few buffers (difflbm.distributed's slab steps) spend less host time per step. The
        records hold their arrays until the block ends; nested blocks share the outer records."""
        outer = self._records
        if outer is None:
            self._records = OrderedDict()
        try:
            yield
        finally:
            if outer is None:
                self._records = None

    @property
    def native_form(self) -> str | None:
        """The native step's form over all cells (difflbm.native.FORMS), None without the native step;
        a launch whose state starts between two pairs' words steps one cell per thread instead."""
        return self._forms[(False, False)] if self.native_step else None

    @property
    def native_constants(self) -> bool:
        """Whether the native step is compiled with the grid and coded box as constants."""
        return bool(self._constants)

    def _forward_variant(self, moments: bool, ranged: bool):
        """The forward step kernel storing moments or not, over all cells or a range: native where
        :attr:`native_step`, else Warp-generated (the moments replay, :meth:`step_cells`)."""
        key = (moments, ranged)
        if key not in self._variants:
            cfg = self.problem.config
            self._variants[key] = (
                N.native_step_kernel(cfg, moments=moments, ranged=ranged,
                                     form=self._forms[key])
                if self.native_step else K.step_kernel(cfg, backward=False, moments=moments, ranged=ranged))
        return self._variants[key]

    def update_wall_term(self, params: Parameters):
        """Recompute the moving-wall bounce-back terms from ``params.wall_velocity``."""
        p = self.problem
        if p.moving_walls:
            wp.launch(self._wall_kernel, dim=p.wall_link_group.shape[0], device=p.device,
                      inputs=[p.wall_link_group, params.wall_velocity], outputs=[self.wall_term])
            if self._wall_rows_on:
                rows = self._wall_rows()
                # the same kernel on the distinct group rows: the same values as the per-slot table
                wp.launch(self._wall_kernel, dim=rows.groups.shape[0], device=p.device,
                          inputs=[rows.groups, params.wall_velocity], outputs=[rows.terms])
                self._rows = rows._replace(fresh=True)

    def _wall_rows(self) -> "_WallRows":
        """:class:`_WallRows` for the problem's current wall table. ``row`` and ``groups`` are cached
        on the problem for its wall table, the pair of arrays ``wall_slot`` and ``wall_link_group`` (a
        gradient builds a Solver per call: at 256^3 the table has 390,152 slots); like the coded box,
        the cache assumes the tables are replaced, never edited in place."""
        p = self.problem
        current = lambda r: r is not None and r.wall_slot is p.wall_slot and r.wall_link_group is p.wall_link_group  # noqa: E731
        if not current(self._rows):
            cached = getattr(p, "_native_wall_rows", None)
            if not current(cached):
                table = np.ascontiguousarray(p.wall_link_group_np, dtype=np.int32)
                # distinct rows by their bytes (one sort of fixed-size keys; np.unique(axis=0) took
                # 5 s at 256^3 on a 2-core machine)
                keys = table.view(np.dtype((np.void, table.dtype.itemsize * table.shape[1]))).reshape(-1)
                _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
                slot = np.asarray(p.wall_slot_np)
                row = np.where(slot >= 0, inverse.reshape(-1)[np.maximum(slot, 0)], -1).astype(np.int32)
                cached = _WallRows(p.wall_slot, p.wall_link_group, wp.array(row, dtype=wp.int32, device=p.device),
                                   wp.array(np.ascontiguousarray(table[first]), dtype=wp.int32, device=p.device),
                                   None, False)
                p._native_wall_rows = cached  # without terms: those are each Solver's
            self._rows = cached._replace(terms=wp.zeros(cached.groups.shape, dtype=K.wp_dtype(p.precision),
                                                        device=p.device), fresh=False)
        return self._rows

    def window(self, t: int, steps: int | None = None) -> int:
        """Inlet window used at step t: windows split [0, steps) evenly; one window means constant."""
        nw = self.problem.inlet_windows
        if nw == 1:
            return 0
        if steps is None:
            raise ValueError("steps must be given to map a step to its inlet window when inlet_windows > 1")
        return min(t * nw // steps, nw - 1)

    def step_inputs(self, state_in: State, params: Parameters, window: int) -> list:
        """Launch inputs of a step; the moving-wall terms are as last set by update_wall_term."""
        p = self.problem
        return [state_in.f, None, p.code, p.slot, p.solid_wall, p.face_wall, p.wall_slot, self.wall_term,
                params.inlet_velocity[window], params.outlet_density, p.link_q, params.omega, params.force,
                params.solid_fraction, p.grid3[0], p.grid3[1], p.grid3[2], None, 0]

    def step(self, state_in: State, state_out: State, params: Parameters, window: int = 0,
             update_walls: bool = True):
        """One fused time step: pull streaming, boundaries, collision; ``state_out`` must differ.

        ``update_walls=False`` skips recomputing the moving-wall terms from ``params.wall_velocity``
        (a small kernel over the wall links): loops that hold the parameters fixed call
        update_wall_term once and step without it.
        """
        if update_walls:
            self.update_wall_term(params)
        self._launch(self.forward_kernel, state_in, state_out, params, window,
                     block_dim=K.forward_block_dim(self.problem.config))

    def step_moments(self, state_in: State, state_out: State, moments: wp.array, params: Parameters,
                     window: int = 0):
        """:meth:`step` that also stores each fluid cell's (rho, u_x, u_y, u_z) as its collision saw
        them into ``moments`` (shape (K.moment_rows(config), cells): a fifth row with velocity or
        pressure boundaries; what the moments replay of a gradient keeps).
        The moving-wall terms are as last set by :meth:`update_wall_term`."""
        self._launch(self._forward_variant(True, False), state_in, state_out, params, window, moments)

    def step_cells(self, state_in: State, state_out: State, params: Parameters, first: int, count: int,
                   window: int = 0, moments: wp.array | None = None):
        """:meth:`step` of cells ``first .. first + count - 1`` only (flat indices; the others of
        ``state_out`` are left as they were); the moving-wall terms are as last set by
        update_wall_term. With ``moments``, :meth:`step_moments` of those cells (their columns of
        ``moments`` only). difflbm.distributed updates a slab's interior while its halos travel."""
        for name, v in (("first", first), ("count", count)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}={v!r} must be an integer")
        first, count = int(first), int(count)
        if first < 0 or count < 0 or first + count > self.problem.cell_count:
            raise ValueError(f"first={first}, count={count} reach outside the cells 0 .. {self.problem.cell_count - 1}")
        with_moments = moments is not None
        if count:
            self._launch(self._forward_variant(with_moments, True), state_in, state_out, params, window, moments,
                         block_dim=None if with_moments else K.forward_block_dim(self.problem.config),
                         first=first, count=count)

    def _launch(self, kernel, state_in: State, state_out: State, params: Parameters, window: int, moments=None,
                block_dim: int | None = None, first: int = 0, count: int | None = None):
        """Launch a forward step kernel; ``block_dim`` is the Warp-generated kernel's, a native kernel
        launches in blocks of N.NATIVE_BLOCK_DIM."""
        if state_in.f.ptr == state_out.f.ptr:
            raise ValueError("state_out is the same buffer as state_in; step needs two distinct states")
        args = self.step_inputs(state_in, params, window)
        args[1] = state_out.f
        args[-2] = moments
        args[-1] = first
        if getattr(kernel, "difflbm_native", False):
            p = self.problem
            q, n = p.lattice.q, p.cell_count
            if N.dense(state_in.f, q, n) and N.dense(state_out.f, q, n) and (
                    moments is None or N.dense(moments, moments.shape[0], n)) and (
                    args[8].is_contiguous and args[9].is_contiguous):  # inlet velocities, outlet densities
                args += N.extra_inputs(p)
                block_dim = N.NATIVE_BLOCK_DIM
                if self._wall_rows_on:
                    rows = self._wall_rows()
                    if rows.fresh:  # filled by update_wall_term for this wall table; else the per-slot table
                        args[6], args[7] = rows.row, rows.terms
                form = kernel.difflbm_form
                if kernel.difflbm_cells_per_thread == 2:
                    pair_bytes = 2 * wp.types.type_size_in_bytes(state_out.f.dtype)
                    if state_out.f.ptr % pair_bytes or ("joint" in form and state_in.f.ptr % pair_bytes):
                        # a view that starts between two pairs' words (an offset buffer): one cell per thread
                        form = N.one_cell_form(form)
                if self._constants or form != kernel.difflbm_form:
                    # the kernel for this form, grid and the problem's current coded box, looked up once
                    # per code array (as N.extra_inputs: a replaced code array gets its own)
                    hit = self._swapped.get((kernel, form))
                    if hit is None or hit[0] is not p.code:
                        hit = (p.code, N.native_step_kernel(
                            p.config, form=form,
                            constants=(N.grid_constants(p, self._solid_flag, self._face_codes)
                                       if self._constants else None),
                            max_registers=kernel.difflbm_max_registers, **kernel.difflbm_variant))
                        self._swapped[(kernel, form)] = hit
                    kernel = hit[1]
            else:  # strided views: the generated kernel, which follows the strides
                kernel = K.step_kernel(p.config, backward=False, **kernel.difflbm_variant)
        threads = self.problem.cell_count if count is None else count
        threads //= getattr(kernel, "difflbm_cells_per_thread", 1)  # two cells per thread: even counts only
        replay_launch(self._records, kernel, threads, args, self.problem.device,
                      K.BLOCK_DIM if block_dim is None else block_dim)

    def check_finite(self, state: State, step: int):
        """Raise :class:`DivergenceError` naming the first non-finite population of ``state``."""
        big = np.iinfo(np.int64).max
        self._first.fill_(big)
        kernel = self._check if state.f.dtype == K.storage_dtype(self.problem.precision) else \
            K.finite_check_kernel(state.f.dtype)
        wp.launch(kernel, dim=state.f.shape[1], inputs=[state.f, self._first, 0], device=self.problem.device)
        first = int(self._first.numpy()[0])
        if first != big:
            direction, cell = divmod(first, self.problem.cell_count)
            raise DivergenceError(step, tuple(int(i) for i in np.unravel_index(cell, self.problem.shape)), direction)

    def run(self, state: State, steps: int, params: Parameters | None = None, check_every: int = 0,
            callback=None, progress: bool = False) -> State:
        """Advance ``state`` by ``steps`` steps and return the final state (``state`` is left intact).

        ``check_every`` > 0 checks for non-finite values that often (and at the end) and raises
        :class:`DivergenceError` with the step and cell; ``callback(t, state)`` runs after step t.
        """
        if int(steps) < 0:
            raise ValueError(f"steps={steps} must be >= 0")
        params = params if params is not None else self.problem.parameters()
        a, b = state.copy(), State.empty(self.problem)
        bar = None
        if progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=steps, unit="step")
            except ImportError:
                bar = None
        good = a.copy() if check_every else None
        good_step = 0
        # the wall terms are computed once; a callback may change params, so then at every step
        self.update_wall_term(params)
        # the step's arguments packed once per buffer, then replayed; not with a callback, which may
        # replace parameter arrays at every step (a record would keep each old one alive)
        with self.recorded_launches() if callback is None else contextlib.nullcontext():
            for t in range(int(steps)):
                self.step(a, b, params, self.window(t, steps), update_walls=callback is not None)
                a, b = b, a
                if check_every and ((t + 1) % check_every == 0 or t + 1 == steps):
                    try:
                        self.check_finite(a, t + 1)
                    except DivergenceError:
                        self._locate(good, good_step, t + 1, params, steps)
                        raise
                    wp.copy(good.f, a.f)
                    good_step = t + 1
                if callback is not None:
                    callback(t + 1, a)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return a

    def _locate(self, good: State, good_step: int, bad_step: int, params, steps):
        """Re-run from the last finite state, checking every step, to name the first bad step."""
        a, b = good.copy(), State.empty(self.problem)
        for t in range(good_step, bad_step):
            self.step(a, b, params, self.window(t, steps))
            a, b = b, a
            self.check_finite(a, t + 1)
