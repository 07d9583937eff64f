"""Reverse-mode gradients through whole rollouts with bounded memory.

One entry point, :func:`value_and_grad`, takes the differentiation strategy as a value:

- :class:`StoreAll` keeps every state of the rollout (T + 1 states; the reference);
- :class:`Checkpointed` (default) keeps a state every ``segment`` steps and recomputes each
  segment in the backward pass (about 2 sqrt(T) states when ``segment`` is left to choose);
- :class:`MemoryBudget` picks the segment length that fits a number of states or of bytes, and can
  keep checkpoints in host memory.

All three run the same step adjoint in the same order, so their gradients agree to round-off.
The backward of a step is the adjoint of the fused forward kernel, launched by us (no tape), so no
intermediate state is ever overwritten while it is still needed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import warp as wp

from . import kernels as K
from .losses import Loss
from .problem import Parameters, Problem, State
from .solver import DivergenceError, Solver

__all__ = ["StoreAll", "Checkpointed", "MemoryBudget", "Gradients", "value_and_grad", "rollout_loss",
           "equilibrium_adjoint", "GRAD_TARGETS"]

GRAD_TARGETS = ("initial",) + Parameters.NAMES


@dataclass(frozen=True)
class StoreAll:
    """Keep every state of the rollout in device memory."""


@dataclass(frozen=True)
class Checkpointed:
    """Keep a checkpoint every ``segment`` steps (None: ceil(sqrt(T))) and recompute segments."""

    segment: int | None = None

    def __post_init__(self):
        if self.segment is not None and int(self.segment) < 1:
            raise ValueError(f"segment={self.segment} must be a positive number of steps")


@dataclass(frozen=True)
class MemoryBudget:
    """Fit the rollout into ``states`` stored states or ``bytes`` of checkpoint memory.

    ``host=True`` keeps checkpoints in host memory (only the segment being replayed is on the device).
    """

    states: int | None = None
    bytes: int | None = None
    host: bool = False

    def __post_init__(self):
        if (self.states is None) == (self.bytes is None):
            raise ValueError("MemoryBudget needs exactly one of states= or bytes=")


class Gradients:
    """Gradients in the layout of their controls; host numpy arrays made on first access.

    ``initial``: d loss / d initial populations, shape (Q, *shape); parameters as in
    :class:`Parameters` (``omega`` (1,) or (cell_count,), vectors with 3 components, ...). Only the
    names asked for in ``wrt`` are set; the others are None. ``device(name)`` gives the Warp array
    without a copy to the host.
    """

    def __init__(self, problem: Problem, wrt, device_params: Parameters, initial_device: wp.array):
        self._problem, self._wrt = problem, tuple(wrt)
        self._device, self._initial_device = device_params, initial_device
        self._host = {}

    def device(self, name: str) -> wp.array:
        if name not in self._wrt:
            raise ValueError(f"name={name!r} was not requested; requested: {', '.join(self._wrt)}")
        return self._initial_device if name == "initial" else getattr(self._device, name)

    def __getattr__(self, name):
        if name.startswith("_") or name not in GRAD_TARGETS:
            raise AttributeError(name)
        if name not in self._wrt:
            return None
        if name not in self._host:
            arr = self.device(name).numpy()
            if name == "initial":
                arr = arr.reshape((self._problem.lattice.q,) + self._problem.shape)
            self._host[name] = arr
        return self._host[name]


def _segment_length(adjoint, steps: int, state_bytes: int) -> tuple[int, bool]:
    if isinstance(adjoint, StoreAll):
        return max(steps, 1), False
    if isinstance(adjoint, Checkpointed):
        return (int(adjoint.segment) if adjoint.segment else max(1, math.isqrt(max(steps - 1, 0)) + 1)), False
    if isinstance(adjoint, MemoryBudget):
        n = adjoint.states if adjoint.states is not None else adjoint.bytes // state_bytes
        n = int(n)
        # device states: segment buffer k (+ checkpoints ceil(T/k) unless on the host)
        if n < 2:
            raise ValueError(f"MemoryBudget allows {n} states; at least 2 are needed; raise states or bytes")
        for k in range(1, steps + 1):
            need = k + (0 if adjoint.host else math.ceil(steps / k))
            if need <= n:
                return k, adjoint.host
        return -n, False  # two levels do not fit: recursive bisection within n states
    raise TypeError(f"adjoint={adjoint!r} is not a strategy; allowed: StoreAll(), Checkpointed(), MemoryBudget()")


_warned_zero = set()


def _arithmetic_view(problem: Problem):
    """``f -> f`` for float32/float64; for float16 storage a converter into a float32 buffer, since
    losses (and their adjoints, which must match the gradient's dtype) work in arithmetic dtype."""
    if problem.precision != "float16":
        return lambda f: f
    dtype = K.wp_dtype(problem.precision)
    buf = wp.zeros((problem.lattice.q, problem.cell_count), dtype=dtype, device=problem.device)
    shift = wp.array(K.storage_shift(problem.lattice.name, problem.precision), dtype=dtype, device=problem.device)
    kernel = K.convert_kernel(K.storage_dtype(problem.precision), dtype)

    def convert(f):
        wp.launch(kernel, dim=f.shape, inputs=[f, shift, buf], device=problem.device)
        return buf

    return convert


def rollout_loss(problem: Problem, params: Parameters, initial: State, steps: int, loss: Loss) -> float:
    """Loss of a rollout without gradients (for finite differences and monitoring)."""
    solver = Solver(problem)
    terms = [t.bind(problem) for t in loss.terms()]
    arith = _arithmetic_view(problem)
    out = wp.zeros(1, dtype=wp.float64, device=problem.device)
    a, b = initial.copy(), State.empty(problem)
    for t in range(steps + 1):
        for term in terms:
            if term.active(t, steps):
                term.evaluate(problem, arith(a.f), params, out)
        if t < steps:
            solver.step(a, b, params, solver.window(t, steps))
            a, b = b, a
    return float(out.numpy()[0])


def value_and_grad(problem: Problem, params: Parameters, initial: State, steps: int, loss: Loss,
                   adjoint=None, wrt=("initial",) + Parameters.NAMES, check: bool = True,
                   step_adjoint: str = "auto"):
    """Run ``steps`` steps from ``initial`` and return ``(loss, Gradients)``.

    ``adjoint`` is the strategy (default :class:`Checkpointed`); ``wrt`` names what to return
    (``initial`` and the fields of :class:`Parameters`). With ``check`` a non-finite loss or gradient
    raises :class:`DivergenceError`-style errors naming the step where it first appeared.
    ``step_adjoint`` picks the kernel that differentiates a step: ``"fused"`` (hand-written, no
    atomics; BGK or TRT, force, walls), ``"warp"`` (Warp's generated adjoint; every configuration) or
    ``"auto"`` (fused where it applies).
    """
    adjoint = Checkpointed() if adjoint is None else adjoint
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    for name in wrt:
        if name not in GRAD_TARGETS:
            raise ValueError(f"wrt={name!r} is not differentiable; allowed: {', '.join(GRAD_TARGETS)} "
                             "(masks, cell kinds and periodic faces have no gradient)")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss={loss!r} must be a difflbm.losses.Loss")
    if initial.problem is not problem or params.problem is not problem:
        raise ValueError("initial and params must belong to the same problem")
    if step_adjoint not in ("auto", "fused", "warp"):
        raise ValueError(f"step_adjoint={step_adjoint!r} is not allowed; allowed: 'auto', 'fused', 'warp'")
    supported = K.fused_adjoint_supported(problem.config)
    if step_adjoint == "fused" and not supported:
        raise ValueError("step_adjoint='fused' does not cover this problem (it needs BGK or TRT, no solid "
                         "fraction, no curved walls, no open boundaries); use 'warp' or 'auto'")
    if problem.precision == "float16" and (not supported or step_adjoint == "warp"):
        raise ValueError("precision='float16' (float16 storage) is differentiated by the fused adjoint only: it "
                         "needs BGK or TRT, no solid fraction, no curved walls, no open boundaries; use float32")
    solver = Solver(problem)
    fused = K.step_adjoint_kernel(problem.config) if supported and step_adjoint != "warp" else None
    dev = problem.device
    terms = [t.bind(problem) for t in loss.terms()]
    state_bytes = initial.f.capacity
    seg, host = _segment_length(adjoint, steps, state_bytes)
    recursive_budget = -seg if seg < 0 else 0
    if seg > 0:
        seg = min(seg, max(steps, 1))

    # ---- forward: checkpoints every `seg` steps, loss accumulated on the way
    out = wp.zeros(1, dtype=wp.float64, device=dev)
    checkpoints = {}
    a, b = initial.copy(), State.empty(problem)

    def keep(t, st):
        checkpoints[t] = st.f.numpy().copy() if host else wp.clone(st.f)

    arith = _arithmetic_view(problem)
    for t in range(steps + 1):
        for term in terms:
            if term.active(t, steps):
                term.evaluate(problem, arith(a.f), params, out)
        if t == steps:
            break
        if seg > 0 and t % seg == 0:
            keep(t, a)
        solver.step(a, b, params, solver.window(t, steps))
        a, b = b, a
    final = a
    value = float(out.numpy()[0])
    if check and not math.isfinite(value):
        solver.check_finite(final, steps)
        raise FloatingPointError(f"loss is {value} after {steps} steps although the final state is finite")

    # ---- backward
    adj_out = wp.ones(1, dtype=wp.float64, device=dev)
    grads = params.zeros_like()
    adj = State.empty(problem, arithmetic=True)
    adj_prev = State.empty(problem, arithmetic=True)
    scratch = State.empty(problem)
    for term in terms:
        if term.active(steps, steps):
            term.adjoint(problem, arith(final.f), params, adj_out, adj.f, grads)
    # d loss / d (moving-wall term per link), summed over all steps and mapped to the wall
    # velocities once at the end (the map is linear and the velocities fixed during a rollout)
    adj_wall_term = wp.zeros_like(solver.wall_term)
    solver.update_wall_term(params)
    # the fused adjoint adds d loss / d omega per cell; a scalar omega is summed once at the end
    omega_cells = None
    if fused is not None and "omega" in wrt:
        omega_cells = grads.omega if problem.config.omega_field else wp.zeros(problem.cell_count,
                                                                              dtype=grads.omega.dtype, device=dev)
    force_cells = None
    if fused is not None and "force" in wrt and problem.config.force != K.FORCE_NONE:
        force_cells = grads.force if problem.config.force == K.FORCE_FIELD else wp.zeros(
            problem.cell_count, dtype=grads.force.dtype, device=dev)
    adjs = [adj, adj_prev]
    if recursive_budget:
        # leaf segments of L states plus a stack of about log2(T / L) checkpoints fit the budget
        leaf = max(1, recursive_budget // 2)
        while leaf > 1 and leaf + math.ceil(math.log2(max(steps / leaf, 1.0))) > recursive_budget:
            leaf -= 1
    else:
        leaf = min(seg, steps)
    buffer = [State.empty(problem) for _ in range(max(leaf, 0))]

    def run_leaf(s0, e0, start: wp.array):
        """Replay states s0..e0-1 from ``start`` and run the adjoint of steps e0-1 down to s0."""
        if host:
            buffer[0].f.assign(start)
        else:
            wp.copy(buffer[0].f, start)
        for t in range(s0, e0 - 1):
            solver.step(buffer[t - s0], buffer[t - s0 + 1], params, solver.window(t, steps))
        for t in reversed(range(s0, e0)):
            cur, prev = adjs
            if fused is not None:
                _fused_step_adjoint(solver, fused, buffer[t - s0], cur, prev, params, grads, omega_cells, wrt,
                                    adj_wall_term, force_cells)
            else:
                prev.f.zero_()
                _step_adjoint(solver, buffer[t - s0], cur, prev, params, grads, solver.window(t, steps), scratch,
                              wrt, adj_wall_term)
            for term in terms:
                if term.active(t, steps):
                    term.adjoint(problem, arith(buffer[t - s0].f), params, adj_out, prev.f, grads)
            adjs.reverse()
            if check and (t == s0 or t % 64 == 0):
                _check_adjoint(solver, adjs[0], t)

    def run_recursive(s0, e0, start: wp.array):
        """Bisect [s0, e0) until a part fits the leaf buffer; one checkpoint per level is alive."""
        if e0 - s0 <= leaf:
            run_leaf(s0, e0, start)
            return
        mid = s0 + (e0 - s0) // 2
        wp.copy(a.f, start)
        for t in range(s0, mid):
            solver.step(a, b, params, solver.window(t, steps))
            a.f, b.f = b.f, a.f
        checkpoint = wp.clone(a.f)
        run_recursive(mid, e0, checkpoint)
        del checkpoint
        run_recursive(s0, mid, start)

    if recursive_budget:
        run_recursive(0, steps, initial.f)
    else:
        for s0 in reversed(range(0, steps, seg)):
            run_leaf(s0, min(s0 + seg, steps), checkpoints.pop(s0))
    adj = adjs[0]

    _finish_parameter_gradients(problem, params, grads, solver, wrt, adj_wall_term, omega_cells, force_cells)
    g = Gradients(problem, wrt, grads, adj.f)
    for name in wrt:
        if name == "initial":
            # checked on the device: the populations' gradient can be gigabytes
            if check:
                _check_adjoint(solver, adj, 0)
            nonzero = _any_nonzero(adj.f)
        else:
            arr = getattr(g, name)
            if check and not np.all(np.isfinite(arr)):
                raise FloatingPointError(f"gradient with respect to {name} is not finite")
            nonzero = bool(np.any(arr))
        if not nonzero and name not in _warned_zero and _is_used(problem, name):
            _warned_zero.add(name)
            warnings.warn(f"the loss does not depend on {name}: its gradient is zero", stacklevel=2)
    return value, g


def _finish_parameter_gradients(problem: Problem, params: Parameters, grads: Parameters, solver: Solver, wrt,
                                adj_wall_term, omega_cells, force_cells):
    """Fold the per-link and per-cell accumulators of a backward pass into ``grads``: the wall-term
    adjoint into the wall velocities, per-cell omega / force sums into a scalar omega / uniform force
    (added to what the losses put there directly)."""
    if problem.moving_walls and "wall_velocity" in wrt:
        wp.launch(K.wall_term_kernel(problem.lattice.name, problem.precision), dim=problem.wall_link_group.shape[0],
                  inputs=[problem.wall_link_group, params.wall_velocity, solver.wall_term],
                  adj_inputs=[None, grads.wall_velocity, adj_wall_term], adjoint=True, device=problem.device)
    if force_cells is not None and problem.config.force == K.FORCE_UNIFORM:
        total = force_cells.numpy().astype(np.float64).sum(axis=0) + grads.force.numpy()[0]
        grads.force.assign(total[None, :].astype(grads.force.numpy().dtype))
    if omega_cells is not None and not problem.config.omega_field:
        total = omega_cells.numpy().astype(np.float64).sum() + grads.omega.numpy()[0]
        grads.omega.assign(np.array([total]).astype(grads.omega.numpy().dtype))


def _any_nonzero(arr: wp.array) -> bool:
    flag = wp.zeros(1, dtype=wp.int32, device=arr.device)
    wp.launch(K.any_nonzero_kernel(arr.dtype), dim=arr.shape, inputs=[arr, flag], device=arr.device)
    return bool(flag.numpy()[0])


def _is_used(problem: Problem, name: str) -> bool:
    """Whether the problem has a control called ``name`` at all (then a zero gradient is worth a note)."""
    cfg = problem.config
    return {"initial": True, "omega": True, "force": cfg.force != K.FORCE_NONE,
            "wall_velocity": cfg.moving_walls, "inlet_velocity": cfg.velocity_bc,
            "outlet_density": cfg.pressure_bc, "solid_fraction": cfg.porosity}[name]


def _step_adjoint(solver: Solver, state_in: State, adj_out: State, adj_in: State, params: Parameters,
                  grads: Parameters, window: int, scratch: State, wrt, adj_wall_term):
    """Accumulate the vector-Jacobian product of one step: adj_in += J^T adj_out, params likewise."""
    p = solver.problem
    inputs = solver.step_inputs(state_in, params, window)
    inputs[1] = scratch.f  # the adjoint replays the forward, which may store into its output
    # controls not asked for get no adjoint array: Warp then skips their accumulation, which for a
    # scalar omega would otherwise be one contended atomic add per cell and step
    def want(name, arr):
        return arr if name in wrt else None

    adj_inputs = [adj_in.f, adj_out.f, None, None, None, None, None, want("wall_velocity", adj_wall_term),
                  want("inlet_velocity", grads.inlet_velocity[window]), want("outlet_density", grads.outlet_density),
                  None, want("omega", grads.omega), want("force", grads.force),
                  want("solid_fraction", grads.solid_fraction), 0, 0, 0]
    wp.launch(solver.kernel, dim=p.cell_count, inputs=inputs, adj_inputs=adj_inputs, adjoint=True, device=p.device)


def _fused_step_adjoint(solver: Solver, kernel, state_in: State, adj_out: State, adj_in: State, params: Parameters,
                        grads: Parameters, omega_cells, wrt, adj_wall_term, force_cells):
    """Overwrite adj_in with J^T adj_out using the hand-written kernel (every entry is stored)."""
    p = solver.problem
    g = p.grid3
    want_wall = int("wall_velocity" in wrt)
    want_omega = int(omega_cells is not None)
    wp.launch(kernel, dim=p.cell_count, device=p.device,
              inputs=[state_in.f, adj_out.f, adj_in.f, p.code, p.solid_wall, p.face_wall, p.wall_slot, solver.wall_term,
                      params.omega, adj_wall_term, omega_cells if want_omega else grads.omega, params.force,
                      force_cells if force_cells is not None else grads.force, p.link_q, params.solid_fraction,
                      want_wall, want_omega,
                      int(force_cells is not None), g[0], g[1], g[2]])


def _check_adjoint(solver: Solver, adj: State, t: int):
    try:
        solver.check_finite(adj, t)
    except DivergenceError as err:
        raise FloatingPointError(f"gradient went non-finite in the backward pass at step {t}, cell {err.cell}, "
                                 f"direction {err.direction}") from None


def equilibrium_adjoint(problem: Problem, rho, velocity, grad_f) -> tuple[np.ndarray, np.ndarray]:
    """Map d loss / d f0 to (d loss / d rho, d loss / d u) for f0 = equilibrium(rho, u).

    ``rho`` has the grid's shape, ``velocity`` shape (*shape, D); returns arrays of those shapes.
    """
    D, N = problem.lattice.dim, problem.cell_count
    dtype = K.wp_dtype(problem.precision)
    vec3 = wp.types.vector(3, dtype)
    np_dt = np.float32 if problem.precision == "float32" else np.float64
    rho = np.asarray(rho, dtype=np.float64)
    u = np.zeros((N, 3))
    u[:, :D] = np.asarray(velocity, dtype=np.float64).reshape(N, D)
    rho_w = wp.array(rho.ravel().astype(np_dt), dtype=dtype, device=problem.device)
    u_w = wp.array(u.astype(np_dt), dtype=vec3, device=problem.device)
    f = wp.zeros((problem.lattice.q, N), dtype=dtype, device=problem.device)
    g = wp.array(np.asarray(grad_f).reshape(problem.lattice.q, N).astype(np_dt), dtype=dtype, device=problem.device)
    g_rho = wp.zeros(N, dtype=dtype, device=problem.device)
    g_u = wp.zeros(N, dtype=vec3, device=problem.device)
    wp.launch(K.equilibrium_kernel(problem.lattice.name, problem.precision), dim=N, inputs=[rho_w, u_w, f],
              adj_inputs=[g_rho, g_u, g], adjoint=True, device=problem.device)
    return g_rho.numpy().reshape(problem.shape), g_u.numpy()[:, :D].reshape(problem.shape + (D,))
