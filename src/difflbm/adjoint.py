"""Reverse-mode gradients through whole rollouts with bounded memory.

One entry point, :func:`value_and_grad`, takes the differentiation strategy as a value:

- :class:`StoreAll` keeps every state of the rollout (T + 1 states; the reference);
- :class:`Checkpointed` (default) keeps a state every ``segment`` steps and recomputes each
  segment in the backward pass (about 2 sqrt(T) states when ``segment`` is left to choose; with
  the moments replay, whose leaf keeps 16 bytes per cell and step in float32 (20 with velocity or
  pressure boundaries), the segment balances the two: sqrt(T x state bytes / leaf bytes per step),
  22 steps at T = 100 for D3Q19 float32);
- :class:`MemoryBudget` picks the segment length that fits a number of states or of bytes, and can
  keep checkpoints in host memory.

All three run the same step adjoint in the same order, so their gradients agree to round-off.
The backward of a step is the adjoint of the fused forward kernel, launched by us (no tape), so no
intermediate state is ever overwritten while it is still needed.
"""

from __future__ import annotations

import gc
import math
import warnings
from dataclasses import dataclass

import numpy as np
import warp as wp

from . import kernels as K
from . import native as N
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
    """Keep a checkpoint every ``segment`` steps and recompute segments. None: the segment that
    holds checkpoints and leaf in the least memory, ceil(sqrt(T)) when the leaf keeps states and
    ceil(sqrt(T x state bytes / moment bytes)) when it keeps (rho, u)."""

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

    def __init__(self, problem: Problem, wrt, device_params: Parameters, initial_device: wp.array,
                 schedule: dict | None = None):
        self._problem, self._wrt = problem, tuple(wrt)
        self._device, self._initial_device = device_params, initial_device
        self._host = {}
        #: how the gradient was computed: checkpoint spans (outermost first), host checkpoints,
        #: what the leaves kept ("states" or "moments") and whether the forward kept the last leaf
        self.schedule = dict(schedule or {})

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


WORKING_STATES = 6  # states a gradient holds besides checkpoints and the leaf buffer
DIRECT_CELLS = 2 ** 21  # from this many cells on, gradients skip CUDA graphs and checkpoint copies
_GATHERED_FORM = True  # moments leaves keep the adjoint in the gathered form (False: push every step, as before)
_KEEP_LAST_LEAF = True  # the forward keeps its last leaf's moments (False: the fifth session's replay, for benchmarks)


def _multilevel_spans(n: int, steps: int) -> list[int]:
    """Fewest levels d, then the longest leaf L, with d c + L + 1 <= n and (c + 1)^d L >= steps."""
    for d in range(2, 64):
        for leaf in range(n - 1 - d, 0, -1):
            c = (n - leaf - 1) // d
            if (c + 1) ** d * leaf >= steps:
                return [(c + 1) ** j * leaf for j in range(d - 1, -1, -1)]
    raise StopIteration


def _multilevel(n: int, steps: int) -> list[int]:
    """Spans of a d-level checkpoint scheme in ``n`` states: leaves of L steps, up to c checkpoints
    per level (c + 1 at the top), (c + 1)^d L >= steps; it costs about d + 1 forward passes where
    two levels cost 2."""
    try:
        return _multilevel_spans(n, steps)
    except StopIteration:
        pass
    least = next(m for m in range(n + 1, 10 ** 6) if _fits(m, steps))
    raise ValueError(f"a memory budget of {n} states cannot hold a rollout of {steps} steps: it needs at least "
                     f"{least}; raise states or bytes")


def _fits(n: int, steps: int) -> bool:
    if any(k + math.ceil(steps / k) <= n for k in range(1, steps + 1)):
        return True
    try:
        _multilevel_spans(n, steps)
        return True
    except StopIteration:
        return False


def _schedule(adjoint, steps: int, state_bytes: int, device, leaf_bytes: int | None = None) -> tuple[list[int], bool]:
    """Checkpoint spans, outermost first, and whether outer checkpoints live in host memory.

    spans[0] is the checkpoint interval of the forward pass, spans[-1] the leaf segment whose states
    are all kept while its adjoint runs; spans in between are replayed keeping a checkpoint every
    next span (see :func:`_multilevel`). ``leaf_bytes``: what a leaf keeps per step (a state, or
    16 bytes per cell in float32 with the moments replay, 20 with open boundaries; default a state). Two-level schedules balance the
    checkpoints' memory against the leaf's, and a budget takes the longest leaf it can hold: the
    last leaf is not replayed when the forward keeps it (moments replay), so longer leaves replay less.
    """
    steps = max(steps, 1)
    leaf_bytes = state_bytes if leaf_bytes is None else leaf_bytes
    ratio = leaf_bytes / state_bytes  # a leaf step's share of a state
    if isinstance(adjoint, StoreAll):
        return [steps], False
    if isinstance(adjoint, Checkpointed):
        if adjoint.segment:
            return [min(int(adjoint.segment), steps)], False
        # ceil(T / s) checkpoints + s leaf steps, least at s = sqrt(T / ratio): sqrt(T) for states
        seg = min(steps, math.isqrt(max(int(math.ceil(steps / ratio)) - 1, 0)) + 1)
        need = (math.ceil(steps / seg) + WORKING_STATES) * state_bytes + seg * leaf_bytes
        dev = wp.get_device(device)
        if dev.is_cuda and need > 0.9 * dev.free_memory and need > 0.9 * _free_memory(dev):
            # the default must not run out of memory: more levels in what is free (documented)
            n = int(0.9 * dev.free_memory // state_bytes) - WORKING_STATES
            if n < 2:
                raise MemoryError(f"{dev.free_memory / 1e9:.1f} GB free on {dev} holds {n + WORKING_STATES} states "
                                  f"of {state_bytes / 1e9:.2f} GB; a gradient needs at least {2 + WORKING_STATES}")
            return _multilevel(n, steps), False
        return [seg], False
    if isinstance(adjoint, MemoryBudget):
        n = adjoint.states if adjoint.states is not None else adjoint.bytes // state_bytes
        n = int(n)
        if n < 2:
            raise ValueError(f"MemoryBudget allows {n} states; at least 2 are needed; raise states or bytes")
        if adjoint.host:  # only the leaf is on the device: the longest leaf that fits
            return [min(int(n / ratio), steps)], True
        # two levels (one recompute) when a leaf of k steps plus ceil(T / k) checkpoints fit: the
        # longest such leaf
        for k in range(steps, 0, -1):
            if k * ratio + math.ceil(steps / k) <= n:
                return [k], False
        return _multilevel(n, steps), False
    raise TypeError(f"adjoint={adjoint!r} is not a strategy; allowed: StoreAll(), Checkpointed(), MemoryBudget()")


def _free_memory(dev) -> int:
    """Free device memory after handing back what the CUDA memory pool keeps from earlier gradients
    (see :func:`_keep_pool`; release threshold 0, then a synchronisation, which is when the pool
    trims). Without this a second gradient with a longer rollout in the same process saw the first
    one's reserve as used and refused to run (H200, 256^3, T = 100 then T = 400). Runs only when
    memory looks short; the threshold is then raised again by :func:`_keep_pool` (a threshold the
    user had set is not restored)."""
    gc.collect()  # the buffers of an earlier gradient can sit in reference cycles of its closures
    if wp.is_mempool_enabled(dev) and wp.get_mempool_release_threshold(dev) > 0:
        wp.set_mempool_release_threshold(dev, 0)
        wp.synchronize_device(dev)
    return dev.free_memory


def _keep_pool(device, nbytes: int):
    """Let the CUDA memory pool keep what a gradient allocates between calls: with the default
    release threshold of 0 every call maps its tens of gigabytes again (measured as about 20 % of
    a 256^3 gradient). Only ever raises the threshold."""
    dev = wp.get_device(device)
    if dev.is_cuda and wp.is_mempool_enabled(dev):
        want = min(int(nbytes), int(0.9 * dev.total_memory))
        if wp.get_mempool_release_threshold(dev) < want:
            wp.set_mempool_release_threshold(dev, want)


def _graph_safe(term) -> bool:
    """Losses of difflbm.losses only launch kernels on arrays made in bind(), so they can be captured."""
    return type(term).__module__ == Loss.__module__


class _Graphs:
    """CUDA graphs of launch sequences: the first use of a key runs eagerly (which loads the kernels
    it needs), the second captures, later ones replay. Capturing with ``force_module_load=False``
    keeps Warp from compiling every module created so far (the Warp-adjoint step kernel a Solver
    creates but the fused path never launches took tens of seconds on a GPU)."""

    LIMIT = 8

    def __init__(self, device, enabled: bool):
        self.device = wp.get_device(device)
        self.enabled = bool(enabled) and self.device.is_cuda
        self.cache = {}
        self.seen = set()

    def run(self, key, launches):
        if not self.enabled or key not in self.seen:
            self.seen.add(key)
            launches()
            return
        graph = self.cache.get(key)
        if graph is None:
            if len(self.cache) >= self.LIMIT:
                launches()
                return
            with wp.ScopedCapture(device=self.device, force_module_load=False) as capture:
                launches()
            graph = self.cache[key] = capture.graph
        wp.capture_launch(graph)

    def clear(self):
        self.cache.clear()
        self.seen.clear()


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
    solver.update_wall_term(params)  # parameters are fixed during the rollout
    terms = [t.bind(problem) for t in loss.terms()]
    arith = _arithmetic_view(problem)
    out = wp.zeros(1, dtype=wp.float64, device=problem.device)
    a, b = initial.copy(), State.empty(problem)
    for t in range(steps + 1):
        for term in terms:
            if term.active(t, steps):
                term.evaluate_at(t, problem, arith(a.f), params, out)
        if t < steps:
            solver.step(a, b, params, solver.window(t, steps), update_walls=False)
            a, b = b, a
    return float(out.numpy()[0])


def value_and_grad(problem: Problem, params: Parameters, initial: State, steps: int, loss: Loss,
                   adjoint=None, wrt=("initial",) + Parameters.NAMES, check: bool = True,
                   step_adjoint: str = "auto", graph: bool = True, replay: str = "auto"):
    """Run ``steps`` steps from ``initial`` and return ``(loss, Gradients)``.

    ``adjoint`` is the strategy (default :class:`Checkpointed`); ``wrt`` names what to return
    (``initial`` and the fields of :class:`Parameters`). With ``check`` a non-finite loss or gradient
    raises :class:`DivergenceError`-style errors naming the step where it first appeared.
    ``step_adjoint`` picks the kernel that differentiates a step: ``"fused"`` (hand-written, no
    atomics; BGK or TRT, force, walls), ``"warp"`` (Warp's generated adjoint; every configuration) or
    ``"auto"`` (fused where it applies). ``graph`` (CUDA only): capture the launches of a forward
    segment and of a segment's replay + adjoint as CUDA graphs, once per segment shape, and replay
    them (launch overhead shows on small grids); losses defined outside difflbm.losses are never
    captured, since they may do host work. From ``DIRECT_CELLS`` cells on the launches run eagerly
    instead: checkpoints are then the forward's own states, with no copies to keep a graph's buffers
    fixed (docs/DESIGN.md).
    ``replay`` is what a replayed leaf segment keeps for its adjoint: ``"states"`` every state
    (4 Q bytes per cell and step in float32), ``"moments"`` only each step's (rho, u) (16 bytes;
    the fused adjoint needs no more for BGK or TRT with walls and force; velocity and pressure
    boundary cells also keep the mass of their known links, a fifth row), or ``"auto"`` (moments
    where they suffice: fused adjoint, no omega gradient and the loss on the final state only).
    Both give the same gradient to round-off.
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
                         "fraction, no curved walls, no zero-gradient outflow); use 'warp' or 'auto'")
    if problem.precision == "float16" and (not supported or step_adjoint == "warp"):
        raise ValueError("precision='float16' (float16 storage) is differentiated by the fused adjoint only: it "
                         "needs BGK or TRT, no solid fraction, no curved walls, no zero-gradient outflow; use float32")
    if replay not in ("auto", "states", "moments"):
        raise ValueError(f"replay={replay!r} is not allowed; allowed: 'auto', 'states', 'moments'")
    solver = Solver(problem)
    solver.update_wall_term(params)  # parameters are fixed during the rollout
    want_omega = "omega" in wrt
    want_force = "force" in wrt and problem.config.force != K.FORCE_NONE
    fused = (K.step_adjoint_kernel(problem.config, omega_grad=want_omega, force_grad=want_force)
             if supported and step_adjoint != "warp" else None)
    dev = problem.device
    terms = [t.bind(problem) for t in loss.terms()]
    use_moments = _moments_replay(problem, replay, fused is not None, want_omega, terms, steps)
    state_bytes = initial.f.capacity
    mom_dtype = K.wp_dtype(problem.precision)
    mom_rows = K.moment_rows(problem.config)
    mom_bytes = mom_rows * problem.cell_count * wp.types.type_size_in_bytes(mom_dtype)
    spans, host = _schedule(adjoint, steps, state_bytes, dev, mom_bytes if use_moments else state_bytes)
    _keep_pool(dev, state_bytes * (len(spans) * 8 + spans[-1] + 8))
    graphs = _Graphs(dev, enabled=graph and all(_graph_safe(t) for t in terms))

    # ---- forward: checkpoints every spans[0] steps, loss accumulated on the way
    out = wp.zeros(1, dtype=wp.float64, device=dev)
    checkpoints = {}
    arith = _arithmetic_view(problem)

    def signature(t0, t1, with_loss):
        return (t1 - t0, tuple(solver.window(t, steps) for t in range(t0, t1)),
                tuple(tuple(term.key(t, steps) for term in terms) for t in range(t0, t1)) if with_loss else ())

    def forward(t0, t1, x, y, with_loss):
        """Steps t0..t1-1 from the state in x (x, y alternate); launches only, so it can be captured."""
        cur, nxt = x, y
        for t in range(t0, t1):
            if with_loss:
                for term in terms:
                    if term.active(t, steps):
                        term.evaluate_at(t, problem, arith(cur.f), params, out)
            solver.step(cur, nxt, params, solver.window(t, steps), update_walls=False)
            cur, nxt = nxt, cur

    # "direct": checkpoints are the states the forward wrote (no copy into them, none out of them
    # into the replay's first buffer); launches are then not captured, since their buffers differ
    # from segment to segment. Used wherever graphs are off and on grids large enough for launch
    # overhead not to matter; otherwise the copies keep the pointers fixed so the graphs replay.
    direct = not host and (not graphs.enabled or problem.cell_count >= DIRECT_CELLS)
    a, b = initial.copy(), _unset_state(problem)
    scratch_pair = (b, _unset_state(problem)) if direct else (a, b)

    def forward_into(t0, t1, x, last):
        """Steps t0..t1-1 from x (never written), the last one into ``last``, the others into the
        scratch pair; loss terms evaluated on the way."""
        cur = x
        for t in range(t0, t1):
            for term in terms:
                if term.active(t, steps):
                    term.evaluate_at(t, problem, arith(cur.f), params, out)
            nxt = last if t == t1 - 1 else (scratch_pair[0] if cur is not scratch_pair[0] else scratch_pair[1])
            solver.step(cur, nxt, params, solver.window(t, steps), update_walls=False)
            cur = nxt

    leaf = spans[-1]
    if use_moments:
        # two states for the replay, (rho, u) of every step but the leaf's last (whose adjoint reads
        # the state the replay ends on)
        ring = [_unset_state(problem) for _ in range(2)]
        moms = [wp.empty((mom_rows, problem.cell_count), dtype=mom_dtype, device=dev)
                for _ in range(max(min(leaf, steps) - 1, 0))]

    def replay_moments(s0, e0, first):
        """Steps s0..e0-2 from ``first`` (never written) keeping each step's (rho, u); returns the
        state at e0 - 1 (``first`` itself when e0 - s0 == 1)."""
        x = first
        for t in range(s0, e0 - 1):
            y = ring[0] if x is not ring[0] else ring[1]
            solver.step_moments(x, y, moms[t - s0], params, solver.window(t, steps))
            x = y
        return x

    top = spans[0]
    # Two levels with the moments replay: the forward keeps its last segment's (rho, u) itself, so
    # that segment, a leaf, is not replayed (one leaf fewer of replay; the last step writes b, which
    # is neither its input nor a ring state). The remainder of T / top is then the first segment,
    # so that the kept one is a whole leaf.
    keep_tail = _KEEP_LAST_LEAF and use_moments and len(spans) == 1 and steps > 0
    first = (steps % top or top) if keep_tail else top
    starts = [0] + list(range(first, steps, top)) if steps > 0 else []
    ends = dict(zip(starts, starts[1:] + [steps]))
    tail = starts[-1] if keep_tail else None
    tail_last = None

    def forward_tail(x):
        nonlocal tail_last
        tail_last = replay_moments(tail, steps, x)
        solver.step(tail_last, b, params, solver.window(steps - 1, steps), update_walls=False)

    if direct:
        for c0 in starts:
            c1 = ends[c0]
            if c0 == tail:
                forward_tail(a)
                a, b = b, a  # a: the final state; b is not read again (the tail needs two levels)
                break
            checkpoints[c0] = a.f
            nxt = _unset_state(problem)
            forward_into(c0, c1, a, nxt)
            a = nxt  # the next checkpoint, or the final state
    else:
        for c0 in starts:
            c1 = ends[c0]
            if c0 == tail:
                forward_tail(a)  # once per call, so eagerly (a graph would be captured at a second use)
                a, b = b, a
                break
            checkpoints[c0] = a.f.numpy().copy() if host else wp.clone(a.f)
            graphs.run((signature(c0, c1, True), a.f.ptr), lambda: forward(c0, c1, a, b, True))
            if (c1 - c0) % 2:
                a, b = b, a
    for term in terms:
        if term.active(steps, steps):
            term.evaluate_at(steps, problem, arith(a.f), params, out)
    final = a
    value = float(out.numpy()[0])
    if check and not math.isfinite(value):
        solver.check_finite(final, steps)
        raise FloatingPointError(f"loss is {value} after {steps} steps although the final state is finite")

    # ---- backward
    adj_out = wp.ones(1, dtype=wp.float64, device=dev)
    grads = params.zeros_like()
    adj = State.empty(problem, arithmetic=True)
    # the fused adjoint stores every entry of its output; Warp's adds into a zeroed one (below)
    adj_prev = _unset_state(problem, arithmetic=True) if fused is not None else State.empty(problem, arithmetic=True)
    scratch = State.empty(problem) if fused is None else None
    for term in terms:
        if term.active(steps, steps):
            term.adjoint_at(steps, problem, arith(final.f), params, adj_out, adj.f, grads)
    # d loss / d (moving-wall term per link), summed over all steps and mapped to the wall
    # velocities once at the end (the map is linear and the velocities fixed during a rollout)
    adj_wall_term = wp.zeros_like(solver.wall_term)
    solver.update_wall_term(params)
    # the fused adjoint adds d loss / d omega per cell; a scalar omega is summed once at the end
    omega_cells = None
    if fused is not None and want_omega:
        omega_cells = grads.omega if problem.config.omega_field else wp.zeros(problem.cell_count,
                                                                              dtype=grads.omega.dtype, device=dev)
    force_cells = None
    if fused is not None and want_force:
        force_cells = grads.force if problem.config.force == K.FORCE_FIELD else wp.zeros(
            problem.cell_count, dtype=grads.force.dtype, device=dev)
    adjs = [adj, adj_prev]
    # the replay's first state: the checkpoint itself (direct) or a copy of it in ``lead`` (whose
    # fixed address lets the leaf's graph replay)
    lead = None if direct else _unset_state(problem)
    if not use_moments:
        rest = [_unset_state(problem) for _ in range(max(min(leaf, steps) - 1, 0))]

    moments_kernels = {}

    def moments_kernel(pull_in, push_out):
        """The moments adjoint reading / writing the plain or the gathered form (K.step_adjoint_kernel)
        and its block size; kernels writing the gathered form launch with their own register cap."""
        if (pull_in, push_out) not in moments_kernels:
            gathered_out = not push_out
            if N.native_adjoint_used(problem.config, problem.cell_count, pull_in, push_out):
                # no register cap: ptxas fits it in 64 registers without spills, and spills 16-20 B at
                # the generated kernel's cap of 56 (D3Q19 float32 / float16)
                kernel = N.native_moments_adjoint_kernel(problem.config, pull_in)
            else:
                kernel = K.step_adjoint_kernel(problem.config, omega_grad=False, force_grad=want_force, moments=True,
                                               pull_in=pull_in, push_out=push_out,
                                               max_registers=K.gathered_register_cap(problem.config) if gathered_out
                                               else None)
            moments_kernels[pull_in, push_out] = kernel, K.GATHERED_BLOCK_DIM if gathered_out else K.BLOCK_DIM
        return moments_kernels[pull_in, push_out]

    def adjoint_moments(s0, e0, cur, prev, x):
        """Adjoint of steps e0-1 .. s0 from the kept (rho, u) and the state ``x`` at e0 - 1."""
        for t in reversed(range(s0, e0)):
            if t == e0 - 1:
                _fused_step_adjoint(solver, fused, x, cur, prev, params, grads, omega_cells, wrt,
                                    adj_wall_term, force_cells, solver.window(t, steps))
            else:
                # inside the leaf the adjoint state stays in the gathered form
                kernel, block = moments_kernel(_GATHERED_FORM and t < e0 - 2, not _GATHERED_FORM or t == s0)
                _fused_step_adjoint(solver, kernel, None, cur, prev, params, grads, omega_cells, wrt,
                                    adj_wall_term, force_cells, solver.window(t, steps), moments=moms[t - s0],
                                    block_dim=block)
            cur, prev = prev, cur

    def leaf_body_moments(s0, e0, cur, prev, first):
        """As leaf_body, keeping (rho, u) per step instead of states (no loss terms before the end)."""
        adjoint_moments(s0, e0, cur, prev, replay_moments(s0, e0, first))

    def leaf_body(s0, e0, cur, prev, first):
        """Replay states s0..e0-1 (s0 is ``first``) and run the adjoint of steps e0-1 .. s0."""
        seq = [first] + rest
        for t in range(s0, e0 - 1):
            solver.step(seq[t - s0], seq[t - s0 + 1], params, solver.window(t, steps), update_walls=False)
        for t in reversed(range(s0, e0)):
            if fused is not None:
                _fused_step_adjoint(solver, fused, seq[t - s0], cur, prev, params, grads, omega_cells, wrt,
                                    adj_wall_term, force_cells, solver.window(t, steps))
            else:
                prev.f.zero_()
                _step_adjoint(solver, seq[t - s0], cur, prev, params, grads, solver.window(t, steps), scratch,
                              wrt, adj_wall_term)
            for term in terms:
                if term.active(t, steps):
                    term.adjoint_at(t, problem, arith(seq[t - s0].f), params, adj_out, prev.f, grads)
            cur, prev = prev, cur

    def run_leaf(s0, e0, start):
        cur, prev = adjs
        body = leaf_body_moments if use_moments else leaf_body
        if direct:
            body(s0, e0, cur, prev, State(problem, start))
        else:
            if isinstance(start, np.ndarray):
                lead.f.assign(start)
            else:
                wp.copy(lead.f, start)
            graphs.run((signature(s0, e0, True), cur.f.ptr), lambda: body(s0, e0, cur, prev, lead))
        if (e0 - s0) % 2:
            adjs.reverse()
        if check:
            deferred.launch(adjs[0], s0)

    def run_level(s0, e0, start, level):
        """Adjoint of steps s0..e0-1 from the state ``start`` at s0: leaves at the last level, else
        replay the span once keeping a checkpoint every spans[level + 1] steps, then recurse backwards."""
        if level == len(spans) - 1:
            run_leaf(s0, e0, start)
            return
        sub = spans[level + 1]
        marks = list(range(s0, e0, sub))
        kept = {s0: start}
        x, y = a, b
        if isinstance(start, np.ndarray):
            x.f.assign(start)
        else:
            wp.copy(x.f, start)
        for m0, m1 in zip(marks, marks[1:]):
            graphs.run((signature(m0, m1, False), x.f.ptr), lambda: forward(m0, m1, x, y, False))
            if (m1 - m0) % 2:
                x, y = y, x
            kept[m1] = wp.clone(x.f)
        for m in reversed(marks):
            run_level(m, min(m + sub, e0), kept.pop(m), level + 1)

    deferred = _DeferredChecks(solver, steps)
    try:
        for c0 in reversed(starts):
            if c0 == tail:  # kept by the forward: no replay. It comes first in this loop, before any
                # replay reuses the ring states that tail_last (the state at T - 1) may live in
                cur, prev = adjs
                adjoint_moments(tail, steps, cur, prev, tail_last)
                if (steps - tail) % 2:
                    adjs.reverse()
                if check:
                    deferred.launch(adjs[0], tail)
                continue
            run_level(c0, ends[c0], checkpoints.pop(c0), 0)
    finally:
        # run_level refers to itself, which would keep every buffer above alive until the garbage
        # collector runs: the next gradient then maps tens of gigabytes anew instead of reusing them
        run_level = None  # noqa: F841
    if check:
        deferred.raise_first()
    adj = adjs[0]
    graphs.clear()

    _finish_parameter_gradients(problem, params, grads, solver, wrt, adj_wall_term, omega_cells, force_cells)
    g = Gradients(problem, wrt, grads, adj.f, dict(spans=list(spans), host=host,
                                                   replay="moments" if use_moments else "states",
                                                   forward_kept_last_leaf=tail is not None))
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


def _unset_state(problem: Problem, arithmetic: bool = False) -> State:
    """A state whose populations are not initialised (no memset), for buffers a kernel fills
    completely before anything reads them: replayed states (a step writes every population of
    every cell) and the fused adjoint's outputs."""
    dtype = K.wp_dtype(problem.precision) if arithmetic else K.storage_dtype(problem.precision)
    return State(problem, wp.empty((problem.lattice.q, problem.cell_count), dtype=dtype, device=problem.device))


def _moments_replay(problem: Problem, replay: str, fused: bool, want_omega: bool, terms, steps: int) -> bool:
    """Whether a gradient's leaf replay keeps (rho, u) per step instead of whole states; raises when
    ``replay="moments"`` is asked for where it cannot be exact."""
    reasons = []
    if not fused:
        reasons.append("the step adjoint is Warp's, not the fused kernel")
    if want_omega:
        reasons.append("the omega gradient needs the populations")
    if any(term.active(t, steps) for term in terms for t in range(steps)):
        reasons.append("a loss term before the last step reads the state of its step")
    if replay == "moments" and reasons:
        raise ValueError("replay='moments' cannot be used here: " + "; ".join(reasons) + "; use 'states' or 'auto'")
    return replay == "moments" or (replay == "auto" and not reasons)


def _finish_parameter_gradients(problem: Problem, params: Parameters, grads: Parameters, solver: Solver, wrt,
                                adj_wall_term, omega_cells, force_cells):
    """Fold the per-link and per-cell accumulators of a backward pass into ``grads``: the wall-term
    adjoint into the wall velocities, per-cell omega / force sums into a scalar omega / uniform force
    (added to what the losses put there directly)."""
    if problem.moving_walls and "wall_velocity" in wrt:
        vec3 = K.physics(problem.lattice.name, problem.precision)["vec3"]
        groups = grads.wall_velocity.shape[0]
        lanes = wp.zeros((min(1024, problem.wall_link_group.shape[0]), groups), dtype=vec3, device=problem.device)
        wp.launch(K.wall_term_adjoint_kernel(problem.lattice.name, problem.precision),
                  dim=problem.wall_link_group.shape[0], inputs=[problem.wall_link_group, adj_wall_term, lanes],
                  device=problem.device)
        total = lanes.numpy().astype(np.float64).sum(axis=0) + grads.wall_velocity.numpy()
        grads.wall_velocity.assign(total.astype(grads.wall_velocity.numpy().dtype))
    if force_cells is not None and problem.config.force == K.FORCE_UNIFORM:
        total = force_cells.numpy().astype(np.float64).sum(axis=0) + grads.force.numpy()[0]
        grads.force.assign(total[None, :].astype(grads.force.numpy().dtype))
    if omega_cells is not None and not problem.config.omega_field:
        total = omega_cells.numpy().astype(np.float64).sum() + grads.omega.numpy()[0]
        grads.omega.assign(np.array([total]).astype(grads.omega.numpy().dtype))


def _any_nonzero(arr: wp.array) -> bool:
    flag = wp.zeros(1, dtype=wp.int32, device=arr.device)
    wp.launch(K.any_nonzero_kernel(arr.dtype), dim=arr.shape[1], inputs=[arr, flag], device=arr.device)
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
                  want("solid_fraction", grads.solid_fraction), 0, 0, 0, None, 0]
    wp.launch(solver.kernel, dim=p.cell_count, inputs=inputs, adj_inputs=adj_inputs, adjoint=True, device=p.device)


def _fused_step_adjoint(solver: Solver, kernel, state_in: State | None, adj_out: State, adj_in: State,
                        params: Parameters, grads: Parameters, omega_cells, wrt, adj_wall_term, force_cells,
                        window: int = 0, moments: wp.array | None = None, block_dim: int | None = None,
                        first: int = 0, count: int | None = None):
    """Overwrite adj_in with J^T adj_out using the hand-written kernel (every entry is stored);
    ``window`` is the inlet window of the step. A moments kernel reads ``moments`` (the step's
    stored rho and u) instead of ``state_in``. ``first`` / ``count``: the cells of a ranged kernel
    (``step_adjoint_kernel(ranged=True)``); default all cells."""
    p = solver.problem
    g = p.grid3
    if (first or count is not None) and not getattr(kernel, "difflbm_ranged", False):
        raise ValueError(f"first={first}, count={count} need a ranged kernel (step_adjoint_kernel(ranged=True)); "
                         "this one adjoins every cell")
    want_wall = int("wall_velocity" in wrt)
    want_omega = int(omega_cells is not None)
    want_inlet = int("inlet_velocity" in wrt and p.config.velocity_bc)
    want_outlet = int("outlet_density" in wrt and p.config.pressure_bc)
    wp.launch(kernel, dim=p.cell_count if count is None else count, device=p.device, block_dim=block_dim or K.BLOCK_DIM,
              inputs=[None if state_in is None else state_in.f, adj_out.f, adj_in.f, p.code, p.solid_wall, p.face_wall, p.wall_slot, solver.wall_term,
                      params.omega, adj_wall_term, omega_cells if want_omega else grads.omega, params.force,
                      force_cells if force_cells is not None else grads.force, p.link_q, params.solid_fraction,
                      p.slot, params.inlet_velocity[window], params.outlet_density, grads.inlet_velocity[window],
                      grads.outlet_density, want_wall, want_omega, int(force_cells is not None), want_inlet,
                      want_outlet, g[0], g[1], g[2], moments, first]
              + (N.extra_inputs(p) if getattr(kernel, "difflbm_native", False) else []))


class _DeferredChecks:
    """Finite checks of the adjoint state after each leaf of the backward pass, launched without a
    host synchronisation (one per leaf cost a device idle gap each); read once at the end, which
    raises naming the step where the gradient first went non-finite (the latest leaf start)."""

    BIG = np.iinfo(np.int64).max

    def __init__(self, solver: Solver, steps: int):
        self.solver = solver
        self.first = wp.full(steps + 1, self.BIG, dtype=wp.int64, device=solver.problem.device)

    def launch(self, adj: State, t: int):
        wp.launch(K.finite_check_kernel(adj.f.dtype), dim=adj.f.shape[1], inputs=[adj.f, self.first, t],
                  device=self.solver.problem.device)

    def raise_first(self):
        first = self.first.numpy()
        bad = np.flatnonzero(first != self.BIG)
        if len(bad):
            t = int(bad[-1])
            p = self.solver.problem
            direction, cell = divmod(int(first[t]), p.cell_count)
            cell = tuple(int(i) for i in np.unravel_index(cell, p.shape))
            raise FloatingPointError(f"gradient went non-finite in the backward pass at step {t}, cell {cell}, "
                                     f"direction {direction}")


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
