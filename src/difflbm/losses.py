"""Differentiable objectives on a state, each a Warp kernel whose adjoint Warp generates.

A loss adds its value into a float64 scalar; ``when`` says at which time levels it counts:
``"final"`` (the state after the last step) or ``"every"`` (every state 1..T, e.g. a time-averaged
drag; ``every=k`` counts states k, 2k, ...; ``start`` skips a transient). A sum of losses is a loss.
"""


from functools import lru_cache

import numpy as np
import warp as wp

from . import kernels as K

__all__ = ["Loss", "KineticEnergy", "DensitySquared", "VelocityMismatch", "DensityMismatch", "Drag",
           "PressureDrop", "Probe", "KernelLoss", "LossSum"]


class Loss:
    """Base class. Subclasses define ``_launch(problem, f, params, out, adj)``."""

    def __init__(self, when: str = "final", every: int = 1, start: int = 0, weight: float = 1.0):
        if when not in ("final", "every"):
            raise ValueError(f"when={when!r} is not allowed; allowed: 'final', 'every'")
        if int(every) < 1:
            raise ValueError(f"every={every} must be >= 1")
        self.when, self.every, self.start, self.weight = when, int(every), int(start), float(weight)

    def active(self, t: int, steps: int) -> bool:
        """Whether the state at time level t (0..steps) contributes."""
        if self.when == "final":
            return t == steps
        return t >= max(self.start, 1) and (t % self.every == 0)

    def key(self, t: int, steps: int):
        """What a CUDA graph of the launches at time level t depends on (hashable); segments of a
        rollout with equal keys replay one graph. Default: whether the term is active."""
        return self.active(t, steps)

    def terms(self):
        return [self]

    def __add__(self, other):
        return LossSum(self.terms() + other.terms())

    def bind(self, problem):
        """Prepare device data for ``problem`` (called once per rollout)."""
        return self

    def evaluate(self, problem, f, params, out):
        self._launch(problem, f, params, out, None)

    def adjoint(self, problem, f, params, adj_out, adj_f, adj_params):
        self._launch(problem, f, params, adj_out, (adj_f, adj_params))

    def evaluate_at(self, t, problem, f, params, out):
        """``evaluate`` at time level t (terms whose data depend on t override this)."""
        self.evaluate(problem, f, params, out)

    def adjoint_at(self, t, problem, f, params, adj_out, adj_f, adj_params):
        self.adjoint(problem, f, params, adj_out, adj_f, adj_params)


class LossSum(Loss):
    """Sum of losses, each with its own schedule."""

    def __init__(self, losses):
        self.losses = list(losses)

    def terms(self):
        return list(self.losses)


def _cells_array(problem, mask, name):
    """Indices of the region's cells; a region of None (every cell) gets an empty array and the
    kernels index by thread id, so a whole-domain loss needs no per-cell host data."""
    if mask is None:
        return wp.zeros(0, dtype=wp.int32, device=problem.device)
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.shape != problem.shape:
        raise ValueError(f"{name} must be a bool array of shape {problem.shape}; got {m.dtype} {m.shape}")
    cells = np.flatnonzero(m.ravel()).astype(np.int32)
    if len(cells) == 0:
        raise ValueError(f"{name} selects no cell")
    return wp.array(cells, dtype=wp.int32, device=problem.device)


@lru_cache(maxsize=None)
def _momentum_func(lattice: str, precision: str, force_mode: int):
    """Momentum of a post-collision cell at its time level: sum_i c_i f_i - F/2 (see kernels)."""
    ph = K.physics(lattice, precision)
    dtype, vec3, vecQ, momentum = ph["dtype"], ph["vec3"], ph["vecQ"], ph["momentum"]

    @wp.func
    def cell_momentum(fl: vecQ, force_arr: wp.array(dtype=vec3), idx: int) -> vec3:
        m = momentum(fl)
        if wp.static(force_mode == K.FORCE_UNIFORM):
            m = m - dtype(0.5) * force_arr[0]
        if wp.static(force_mode == K.FORCE_FIELD):
            m = m - dtype(0.5) * force_arr[idx]
        return m

    return cell_momentum


@lru_cache(maxsize=None)
def _field_loss_kernel(lattice: str, precision: str, kind: str, force_mode: int):
    cell_momentum = _momentum_func(lattice, precision, force_mode)
    ph = K.physics(lattice, precision)
    dtype, vec3, vecQ, Q = ph["dtype"], ph["vec3"], ph["vecQ"], ph["Q"]
    density = ph["density"]

    @wp.kernel(module="unique", module_options=K.MODULE_OPTIONS)
    def lbm_field_loss(f: wp.array2d(dtype=dtype), cells: wp.array(dtype=wp.int32),
                       target_rho: wp.array(dtype=dtype), target_u: wp.array(dtype=vec3),
                       force_arr: wp.array(dtype=vec3), weight: float, out: wp.array(dtype=wp.float64),
                       lanes: int):
        j = wp.tid()
        idx = j
        if cells.shape[0] > 0:
            idx = cells[j]
        fl = vecQ()
        for i in range(wp.static(Q)):
            fl[i] = f[i, idx]
        rho = density(fl)
        m = cell_momentum(fl, force_arr, idx)
        val = dtype(0.0)
        if wp.static(kind == "rho2"):
            val = rho * rho
        if wp.static(kind == "kinetic"):
            val = dtype(0.5) * wp.dot(m, m) / rho
        if wp.static(kind == "velocity"):
            d = m / rho - target_u[j]
            val = wp.dot(d, d)
        if wp.static(kind == "density"):
            d = rho - target_rho[j]
            val = d * d
        # ``lanes`` accumulators instead of one: millions of float64 atomics on one address
        # serialized (30 ms for a 256^3 kinetic energy on an H200, 40 % of a forward step's time x 40)
        wp.atomic_add(out, j % lanes, wp.float64(val) * wp.float64(weight))

    return lbm_field_loss


LANES = 1024


@wp.kernel(enable_backward=False, module="unique")
def _fold_lanes(partial: wp.array(dtype=wp.float64), out: wp.array(dtype=wp.float64)):
    """Add the lane accumulators into out[0] and zero them for the next evaluation."""
    i = wp.tid()
    wp.atomic_add(out, 0, partial[i])
    partial[i] = wp.float64(0.0)


class _FieldLoss(Loss):
    kind = ""

    def __init__(self, region=None, target=None, **kw):
        super().__init__(**kw)
        self.region, self.target = region, target

    def bind(self, problem):
        self.cells = _cells_array(problem, self.region, "region")
        self.count = self.cells.shape[0] if self.region is not None else problem.cell_count
        dtype = K.wp_dtype(problem.precision)
        vec3 = wp.types.vector(3, dtype)
        np_dt = np.float32 if problem.precision == "float32" else np.float64
        sel = self.cells.numpy() if self.region is not None else slice(None)
        # targets only where the loss reads them: a whole-domain kinetic energy needs none
        n = self.count if self.kind in ("velocity", "density") else 1
        tr = np.zeros(n)
        tu = np.zeros((n, 3))
        if self.kind == "velocity":
            tu = self._velocity_rows(problem, self.target, "target")
        if self.kind == "density":
            t = np.asarray(self.target, dtype=np.float64)
            if t.shape != problem.shape:
                raise ValueError(f"target has shape {t.shape}; it must be {problem.shape}")
            tr = t.ravel()[sel]
        self.target_rho = wp.array(tr.astype(np_dt), dtype=dtype, device=problem.device)
        self.target_u = wp.array(tu.astype(np_dt), dtype=vec3, device=problem.device)
        self.kernel = _field_loss_kernel(problem.lattice.name, problem.precision, self.kind, problem.force_mode)
        self.partial = wp.zeros(LANES, dtype=wp.float64, device=problem.device)
        return self

    def _velocity_rows(self, problem, target, name):
        """A velocity snapshot of shape (*shape, D) as the (count, 3) rows of the loss's cells."""
        D = problem.lattice.dim
        t = np.asarray(target, dtype=np.float64)
        if t.shape != problem.shape + (D,):
            raise ValueError(f"{name} has shape {t.shape}; it must be {problem.shape + (D,)}")
        rows = np.zeros((self.count, 3))
        rows[:, :D] = t.reshape(-1, D)[self.cells.numpy() if self.region is not None else slice(None)]
        return rows

    def _launch(self, problem, f, params, out, adj, target_u=None):
        target_u = self.target_u if target_u is None else target_u
        if adj is None:
            lanes = min(LANES, self.count)
            inputs = [f, self.cells, self.target_rho, target_u, params.force, self.weight, self.partial, lanes]
            wp.launch(self.kernel, dim=self.count, inputs=inputs, device=problem.device)
            wp.launch(_fold_lanes, dim=lanes, inputs=[self.partial, out], device=problem.device)
        else:
            inputs = [f, self.cells, self.target_rho, target_u, params.force, self.weight, out, 1]
            wp.launch(self.kernel, dim=self.count, inputs=inputs,
                      adj_inputs=[adj[0], None, None, None, adj[1].force, 0.0, out, 0], adjoint=True,
                      device=problem.device)


class DensitySquared(_FieldLoss):
    """sum over the region of rho^2."""

    kind = "rho2"


class KineticEnergy(_FieldLoss):
    """sum over the region of |rho u|^2 / (2 rho) (kinetic energy, lattice units)."""

    kind = "kinetic"


class VelocityMismatch(_FieldLoss):
    """sum over the region of |u - target|^2; ``target`` has shape (*shape, D)."""

    kind = "velocity"


class VelocityMismatchSeries(VelocityMismatch):
    """sum over observed time levels t and the region of |u(t) - target_t|^2.

    ``targets`` maps a time level (1..steps) to a velocity snapshot of shape (*shape, D). One term
    stands for every observation: the targets live in one device array and each time level launches
    on its slice, so a rollout observed at thousands of steps costs no per-step Python work (a list
    of one term per step did: O(steps x terms) checks per rollout).
    """

    def __init__(self, targets: dict, region=None, weight: float = 1.0):
        if not isinstance(targets, dict) or not targets:
            raise ValueError(f"targets must be a non-empty dict {{time level: snapshot}}; got {type(targets).__name__}")
        levels = sorted(int(t) for t in targets)
        if levels[0] < 1:
            raise ValueError(f"targets has time level {levels[0]}; time levels start at 1 (after the first step)")
        super().__init__(region=region, target=None, when="every", weight=weight)
        self.levels = levels
        self.index = {t: k for k, t in enumerate(levels)}
        self.snapshots = [np.asarray(targets[t], dtype=np.float64) for t in levels]

    def active(self, t, steps):
        return t in self.index

    def key(self, t, steps):
        return self.index.get(t, -1)

    def bind(self, problem):
        # the snapshots are uploaded once per problem: an optimization calls bind for every
        # gradient, and 2,000 snapshots of 768 x 256 cells are 4.7 GB to copy each time
        if getattr(self, "_bound", None) is problem:
            return self
        D = problem.lattice.dim
        for t, snap in zip(self.levels, self.snapshots):
            if snap.shape != problem.shape + (D,):
                raise ValueError(f"targets[{t}] has shape {snap.shape}; it must be {problem.shape + (D,)}")
        self.target = self.snapshots[0]
        super().bind(problem)
        np_dt = np.float32 if problem.precision == "float32" else np.float64
        stack = np.empty((len(self.levels) * self.count, 3), dtype=np_dt)  # filled a snapshot at a time
        for k, snap in enumerate(self.snapshots):
            stack[k * self.count:(k + 1) * self.count] = self._velocity_rows(problem, snap, "target")
        self.stack = wp.array(stack, dtype=self.target_u.dtype, device=problem.device)
        self.views = [self.stack[k * self.count:(k + 1) * self.count] for k in range(len(self.levels))]
        self._bound = problem  # a reference, not an id: ids are reused after garbage collection
        return self

    def evaluate(self, problem, f, params, out):
        raise RuntimeError("VelocityMismatchSeries is evaluated through evaluate_at (the rollout passes t)")

    def evaluate_at(self, t, problem, f, params, out):
        self._launch(problem, f, params, out, None, self.views[self.index[t]])

    def adjoint_at(self, t, problem, f, params, adj_out, adj_f, adj_params):
        self._launch(problem, f, params, adj_out, (adj_f, adj_params), self.views[self.index[t]])


class DensityMismatch(_FieldLoss):
    """sum over the region of (rho - target)^2; ``target`` has shape ``shape``."""

    kind = "density"


class PressureDrop(Loss):
    """Mean pressure (rho/3) over ``region_a`` minus mean pressure over ``region_b``."""

    def __init__(self, region_a, region_b, **kw):
        super().__init__(**kw)
        self.a = DensitySum(region_a, scale=1.0 / 3.0)
        self.b = DensitySum(region_b, scale=-1.0 / 3.0)

    def bind(self, problem):
        self.a.bind(problem)
        self.b.bind(problem)
        self.a.weight = self.weight / self.a.count
        self.b.weight = self.weight / self.b.count
        return self

    def _launch(self, problem, f, params, out, adj):
        self.a._launch(problem, f, params, out, adj)
        self.b._launch(problem, f, params, out, adj)


class DensitySum(_FieldLoss):
    """scale * sum over the region of rho (a building block for pressures and probes)."""

    kind = "rho"

    def __init__(self, region=None, scale=1.0, **kw):
        super().__init__(region=region, **kw)
        self.scale = scale

    def bind(self, problem):
        super().bind(problem)
        self.kernel = _density_sum_kernel(problem.lattice.name, problem.precision)
        return self

    def _launch(self, problem, f, params, out, adj):
        inputs = [f, self.cells, self.weight * self.scale, out]
        if adj is None:
            wp.launch(self.kernel, dim=self.count, inputs=inputs, device=problem.device)
        else:
            wp.launch(self.kernel, dim=self.count, inputs=inputs, adj_inputs=[adj[0], None, 0.0, out],
                      adjoint=True, device=problem.device)


@lru_cache(maxsize=None)
def _density_sum_kernel(lattice: str, precision: str):
    ph = K.physics(lattice, precision)
    dtype, Q = ph["dtype"], ph["Q"]

    @wp.kernel(module="unique", module_options=K.MODULE_OPTIONS)
    def lbm_density_sum(f: wp.array2d(dtype=dtype), cells: wp.array(dtype=wp.int32), scale: float,
                        out: wp.array(dtype=wp.float64)):
        idx = wp.tid()
        if cells.shape[0] > 0:
            idx = cells[idx]
        rho = dtype(0.0)
        for i in range(wp.static(Q)):
            rho += f[i, idx]
        wp.atomic_add(out, 0, wp.float64(rho) * wp.float64(scale))

    return lbm_density_sum


class Probe(Loss):
    """The value of ``quantity`` ('rho', 'ux', 'uy', 'uz') at one cell."""

    def __init__(self, cell, quantity="ux", **kw):
        super().__init__(**kw)
        allowed = ("rho", "ux", "uy", "uz")
        if quantity not in allowed:
            raise ValueError(f"quantity={quantity!r} is not allowed; allowed: {', '.join(allowed)}")
        self.cell, self.quantity = tuple(cell), quantity

    def bind(self, problem):
        if len(self.cell) != problem.lattice.dim or any(not (0 <= c < s) for c, s in zip(self.cell, problem.shape)):
            raise ValueError(f"cell={self.cell} is not inside shape={problem.shape}")
        self.index = int(np.ravel_multi_index(self.cell, problem.shape))
        self.kernel = _probe_kernel(problem.lattice.name, problem.precision, self.quantity, problem.force_mode)
        return self

    def _launch(self, problem, f, params, out, adj):
        inputs = [f, self.index, params.force, self.weight, out]
        if adj is None:
            wp.launch(self.kernel, dim=1, inputs=inputs, device=problem.device)
        else:
            wp.launch(self.kernel, dim=1, inputs=inputs, adj_inputs=[adj[0], 0, adj[1].force, 0.0, out], adjoint=True,
                      device=problem.device)


@lru_cache(maxsize=None)
def _probe_kernel(lattice: str, precision: str, quantity: str, force_mode: int):
    cell_momentum = _momentum_func(lattice, precision, force_mode)
    ph = K.physics(lattice, precision)
    dtype, vecQ, Q, density = ph["dtype"], ph["vecQ"], ph["Q"], ph["density"]
    vec3 = ph["vec3"]
    comp = {"ux": 0, "uy": 1, "uz": 2}.get(quantity, -1)

    @wp.kernel(module="unique", module_options=K.MODULE_OPTIONS)
    def lbm_probe(f: wp.array2d(dtype=dtype), idx: int, force_arr: wp.array(dtype=vec3), weight: float,
                  out: wp.array(dtype=wp.float64)):
        fl = vecQ()
        for i in range(wp.static(Q)):
            fl[i] = f[i, idx]
        rho = density(fl)
        m = cell_momentum(fl, force_arr, idx)
        val = rho
        if wp.static(comp >= 0):
            val = m[wp.static(comp)] / rho
        wp.atomic_add(out, 0, wp.float64(val) * wp.float64(weight))

    return lbm_probe


class Drag(Loss):
    """Force component ``axis`` on wall ``boundary`` (its index in the problem's boundaries) by
    momentum exchange on the state that the next step streams (drag: axis 0, lift: axis 1)."""

    def __init__(self, boundary: int, axis: int = 0, **kw):
        super().__init__(**kw)
        self.boundary, self.axis = int(boundary), int(axis)

    def bind(self, problem):
        if self.boundary not in problem.wall_groups:
            raise ValueError(f"boundary={self.boundary} is not a Wall of the problem; walls: {sorted(problem.wall_groups)}")
        if not (0 <= self.axis < problem.lattice.dim):
            raise ValueError(f"axis={self.axis} must be in [0, {problem.lattice.dim})")
        self.group = problem.wall_groups[self.boundary]
        self.kernel = _drag_kernel(problem.lattice.name, problem.precision, problem.curved, self.axis)
        return self

    def _launch(self, problem, f, params, out, adj):
        g = problem.grid3
        inputs = [f, problem.code, problem.solid_wall, problem.face_wall, problem.link_q, self.group,
                  g[0], g[1], g[2], self.weight, out]
        if adj is None:
            wp.launch(self.kernel, dim=problem.cell_count, inputs=inputs, device=problem.device)
        else:
            wp.launch(self.kernel, dim=problem.cell_count, inputs=inputs,
                      adj_inputs=[adj[0], None, None, None, None, 0, 0, 0, 0, 0.0, out], adjoint=True,
                      device=problem.device)


@lru_cache(maxsize=None)
def _drag_kernel(lattice: str, precision: str, curved: bool, axis: int):
    ph = K.physics(lattice, precision)
    dtype = ph["dtype"]
    exchange = K.momentum_exchange_func(lattice, precision, curved)

    @wp.kernel(module="unique", module_options=K.MODULE_OPTIONS)
    def lbm_drag(f: wp.array2d(dtype=dtype), code: wp.array(dtype=wp.uint32), solid_wall: wp.array(dtype=wp.int32),
                 face_wall: wp.array(dtype=wp.int32), link_q: wp.array2d(dtype=dtype), group: int,
                 nx: int, ny: int, nz: int, weight: float, out: wp.array(dtype=wp.float64)):
        idx = wp.tid()
        fvec = exchange(f, code, solid_wall, face_wall, link_q, group, nx, ny, nz, idx)
        wp.atomic_add(out, 0, wp.float64(fvec[wp.static(axis)]) * wp.float64(weight))

    return lbm_drag


class KernelLoss(Loss):
    """A user loss: ``kernel(f, *inputs, out)`` launched over ``dim`` threads, adding into out[0]
    (a float64 array of shape (1,)); Warp generates its adjoint. ``f`` has shape (Q, cell_count) and
    holds post-collision populations. Warp replays loops in the adjoint only when they are unrolled:
    keep loops over Q within the kernel module's ``max_unroll`` (16 by default; D3Q19 needs more,
    e.g. ``@wp.kernel(module_options={"max_unroll": 64})``)."""

    def __init__(self, kernel, dim, inputs=(), **kw):
        super().__init__(**kw)
        self.kernel, self.dim, self.inputs = kernel, dim, list(inputs)

    def _launch(self, problem, f, params, out, adj):
        inputs = [f, *self.inputs, out]
        if adj is None:
            wp.launch(self.kernel, dim=self.dim, inputs=inputs, device=problem.device)
        else:
            zero = [None if isinstance(v, wp.array) else type(v)(0) for v in self.inputs]
            wp.launch(self.kernel, dim=self.dim, inputs=inputs, adj_inputs=[adj[0], *zero, out], adjoint=True,
                      device=problem.device)
