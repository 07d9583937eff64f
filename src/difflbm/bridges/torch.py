"""PyTorch bridge: a difflbm rollout as a ``torch.library`` custom op with a checkpointed backward,
and a single step as a custom op.

:func:`rollout_op` binds a problem, a step count and a loss, and returns a callable that maps tensors
for the chosen controls (initial populations, parameters) to the scalar loss. The forward and the
vector-Jacobian product are two custom ops (``difflbm::rollout`` and ``difflbm::rollout_vjp``), so
``torch.compile`` sees opaque nodes with known output shapes instead of tracing into Warp.
:func:`step_op` is the same for one time step (``difflbm::step`` / ``difflbm::step_vjp``): it maps
the populations (and the chosen parameters) to the populations after the step, for models that put
torch code between steps (a learned closure, a controller).

Custom ops accept only tensors and simple scalars, so the Python objects of a rollout (problem, loss,
adjoint strategy) live in a module-level registry and the ops receive an integer key to it.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import warp as wp

from .. import adjoint as A
from .. import kernels as K
from ..losses import Loss
from ..problem import Parameters, Problem, State
from ..solver import Solver
from ._common import CONTROLS, VECTOR_CONTROLS, check_rollout, control_shape

__all__ = ["rollout_op", "Rollout", "step_op", "Step", "CONTROLS"]



@dataclass
class _Entry:
    problem: Problem
    steps: int
    loss: Loss
    adjoint: object
    controls: tuple
    params: Parameters
    initial: State
    dtype: torch.dtype
    shapes: tuple


_registry: dict[int, _Entry] = {}
_keys = itertools.count()


def _torch_dtype(problem: Problem) -> torch.dtype:
    return torch.float32 if problem.precision == "float32" else torch.float64


def _torch_device(problem: Problem) -> torch.device:
    return torch.device("cpu" if problem.device.is_cpu else f"cuda:{problem.device.ordinal}")




def _check(entry: _Entry, tensors) -> None:
    # Runs on real and on fake tensors, so shape/dtype/device errors surface at call or trace time,
    # before any Warp code sees the data.
    if len(tensors) != len(entry.controls):
        raise ValueError(f"got {len(tensors)} tensors; this rollout takes {len(entry.controls)}: "
                         f"{', '.join(entry.controls)}")
    device = _torch_device(entry.problem)
    for name, shape, t in zip(entry.controls, entry.shapes, tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}={type(t).__name__} must be a torch.Tensor")
        if t.dtype != entry.dtype:
            raise ValueError(f"{name} has dtype={t.dtype}; the problem's precision is {entry.problem.precision}, "
                             f"so allowed: {entry.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on device={t.device}; allowed: {device} (the problem's device)")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape={tuple(t.shape)}; allowed: {shape}")


def _bind(entry: _Entry, tensors):
    """Wrap the tensors as Warp arrays (zero copy when contiguous) inside a fresh State and Parameters."""
    problem = entry.problem
    dtype = K.wp_dtype(problem.precision)
    vec3 = wp.types.vector(3, dtype)
    params = Parameters.__new__(Parameters)
    params.problem = problem
    for name in Parameters.NAMES:
        setattr(params, name, getattr(entry.params, name))
    initial = entry.initial
    # Warp kernels index with dense strides; .contiguous() is a no-op (no copy) for dense tensors.
    for name, t in zip(entry.controls, tensors):
        t = t.detach().contiguous()
        if name == "initial":
            initial = State(problem, wp.from_torch(t.view(problem.lattice.q, problem.cell_count), dtype=dtype,
                                                   requires_grad=False))
        else:
            arr = wp.from_torch(t, dtype=vec3 if name in VECTOR_CONTROLS else dtype, requires_grad=False)
            setattr(params, name, arr)
    return params, initial


def _on_torch_stream(problem: Problem):
    # Zero-copy inputs were written on torch's current CUDA stream; Warp must launch on the same one.
    if problem.device.is_cpu:
        return contextlib.nullcontext()
    return wp.ScopedStream(wp.stream_from_torch(_torch_device(problem)))


@torch.library.custom_op("difflbm::rollout", mutates_args=())
def _rollout(key: int, xs: list[torch.Tensor]) -> torch.Tensor:
    entry = _registry[key]
    params, initial = _bind(entry, xs)
    with _on_torch_stream(entry.problem):
        value = A.rollout_loss(entry.problem, params, initial, entry.steps, entry.loss)
    return torch.tensor(value, dtype=entry.dtype, device=_torch_device(entry.problem))


@_rollout.register_fake
def _(key, xs):
    entry = _registry[key]
    return xs[0].new_empty((), dtype=entry.dtype)


@torch.library.custom_op("difflbm::rollout_vjp", mutates_args=())
def _rollout_vjp(key: int, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d xs for a unit cotangent; the caller scales by the incoming gradient."""
    entry = _registry[key]
    params, initial = _bind(entry, xs)
    with _on_torch_stream(entry.problem):
        # no CUDA graphs on torch's stream: under torch.compile it is the legacy default stream, on
        # which no graph can be captured (Warp: "unknown stream", seen on an H200)
        _, g = A.value_and_grad(entry.problem, params, initial, entry.steps, entry.loss, adjoint=entry.adjoint,
                                wrt=entry.controls, graph=False)
    out = []
    for name, shape in zip(entry.controls, entry.shapes):
        # The gradient buffers are allocated per call, so handing their memory to torch is safe.
        arr = g.device(name)
        out.append(wp.to_torch(arr, requires_grad=False).reshape(shape))
    return out


@_rollout_vjp.register_fake
def _(key, xs):
    return [torch.empty_like(x) for x in xs]


def _setup_context(ctx, inputs, output):
    key, xs = inputs
    ctx.key = key
    ctx.save_for_backward(*xs)


def _backward(ctx, grad):
    grads = torch.ops.difflbm.rollout_vjp(ctx.key, list(ctx.saved_tensors))
    return None, [g * grad for g in grads]


_rollout.register_autograd(_backward, setup_context=_setup_context)


class _BoundOp:
    """A rollout or step bound in the registry; called with one tensor per control (in ``controls``
    order). ``shapes`` lists the tensor shape each control must have; ``dtype`` and ``device``
    follow the problem's precision and device."""

    _op = None  # the torch.ops entry a subclass calls

    def __init__(self, key: int):
        self.key = key
        entry = _registry[key]
        self.controls, self.shapes, self.dtype = entry.controls, entry.shapes, entry.dtype
        self.device = _torch_device(entry.problem)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        _check(_registry[self.key], tensors)
        return self._op(self.key, list(tensors))

    def __repr__(self):
        return f"{type(self).__name__}(key={self.key}, controls={self.controls}, shapes={self.shapes})"


def _register(problem, steps, loss, adjoint, controls, params, initial) -> int:
    shapes = tuple(control_shape(problem, params, n) for n in controls)
    key = next(_keys)
    _registry[key] = _Entry(problem, steps, loss, adjoint, controls, params, initial, _torch_dtype(problem), shapes)
    return key


class Rollout(_BoundOp):
    """A bound rollout; call it with one tensor per control to get the scalar loss."""

    _op = staticmethod(torch.ops.difflbm.rollout)


def rollout_op(problem: Problem, steps: int, loss: Loss, adjoint=None, controls=("initial",),
               params: Parameters | None = None, initial: State | None = None) -> Rollout:
    """Bind a rollout of ``steps`` steps and ``loss`` on ``problem`` as a differentiable torch function.

    ``controls`` names the inputs (``initial`` and fields of :class:`~difflbm.Parameters`); the
    returned :class:`Rollout` takes one tensor for each: ``initial`` of shape (Q, *shape), parameters
    in the layout of :class:`~difflbm.Parameters` with vector fields ending in 3 (``inlet_velocity``:
    (windows, inlet cells, 3)). Controls not given come from ``params`` and ``initial`` (defaults:
    ``problem.parameters()`` and the state at rest). The backward runs
    :func:`difflbm.adjoint.value_and_grad` with ``adjoint`` (default checkpointed).
    """
    steps, controls, params, initial, adjoint = check_rollout(problem, steps, loss, adjoint, controls, params, initial)
    return Rollout(_register(problem, steps, loss, adjoint, controls, params, initial))


# ------------------------------------------------------------------------------------------ one step
class _Cotangent(Loss):
    """loss = sum over (i, cell) of w f: its gradient through one step is the step's
    vector-Jacobian product with the cotangent w."""

    def __init__(self, weights: wp.array):
        super().__init__(when="final")
        self.weights = weights

    def _launch(self, problem, f, params, out, adj):
        kernel = _lbm_dot  # generic over float32 / float64
        if adj is None:
            wp.launch(kernel, dim=f.shape, inputs=[f, self.weights, out], device=problem.device)
        else:
            wp.launch(kernel, dim=f.shape, inputs=[f, self.weights, out], adj_inputs=[adj[0], None, out],
                      adjoint=True, device=problem.device)


@wp.kernel(module="unique")
def _lbm_dot(f: wp.array2d(dtype=Any), w: wp.array2d(dtype=Any), out: wp.array(dtype=wp.float64)):
    i, n = wp.tid()
    wp.atomic_add(out, 0, wp.float64(w[i, n] * f[i, n]))


def _step_shape(entry: _Entry) -> tuple:
    return (entry.problem.lattice.q,) + entry.problem.shape


@torch.library.custom_op("difflbm::step", mutates_args=())
def _step(key: int, xs: list[torch.Tensor]) -> torch.Tensor:
    entry = _registry[key]
    params, initial = _bind(entry, xs)
    problem = entry.problem
    with _on_torch_stream(problem):
        out = State.empty(problem)
        Solver(problem).step(initial, out, params)
    # the output buffer is allocated per call, so handing its memory to torch is safe
    return wp.to_torch(out.f, requires_grad=False).reshape(_step_shape(entry))


@_step.register_fake
def _(key, xs):
    return xs[0].new_empty(_step_shape(_registry[key]), dtype=_registry[key].dtype)


@torch.library.custom_op("difflbm::step_vjp", mutates_args=())
def _step_vjp(key: int, xs: list[torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor]:
    """J^T grad for every control of one step."""
    entry = _registry[key]
    params, initial = _bind(entry, xs)
    problem = entry.problem
    dtype = K.wp_dtype(problem.precision)
    weights = wp.from_torch(grad.detach().contiguous().view(problem.lattice.q, problem.cell_count), dtype=dtype,
                            requires_grad=False)
    with _on_torch_stream(problem), warnings.catch_warnings():
        # a zero cotangent (torch passes them, e.g. for rows gradcheck does not probe) is no user error
        warnings.filterwarnings("ignore", message="the loss does not depend on")
        _, g = A.value_and_grad(problem, params, initial, 1, _Cotangent(weights), adjoint=A.StoreAll(),
                                wrt=entry.controls, graph=False)
    return [wp.to_torch(g.device(name), requires_grad=False).reshape(shape)
            for name, shape in zip(entry.controls, entry.shapes)]


@_step_vjp.register_fake
def _(key, xs, grad):
    return [torch.empty_like(x) for x in xs]


def _step_backward(ctx, grad):
    return None, torch.ops.difflbm.step_vjp(ctx.key, list(ctx.saved_tensors), grad.contiguous())


_step.register_autograd(_step_backward, setup_context=_setup_context)


class Step(_BoundOp):
    """A bound time step; call it with one tensor per control (``initial``: the populations before
    the step, shape (Q, *shape)) to get the populations after it."""

    _op = staticmethod(torch.ops.difflbm.step)


def step_op(problem: Problem, controls=("initial",), params: Parameters | None = None) -> Step:
    """One time step of ``problem`` as a differentiable torch function of ``controls``.

    ``controls`` must include ``initial`` (the populations the step starts from); parameters not
    given come from ``params`` (default ``problem.parameters()``). The backward is the adjoint of the
    same fused step (the hand-written one where it applies). A step has one time level, so problems
    with several inlet windows are refused.
    """
    controls = (controls,) if isinstance(controls, str) else tuple(controls)
    if "initial" not in controls:
        raise ValueError(f"controls={controls} must include 'initial' (the populations a step starts from)")
    if problem.inlet_windows != 1:
        raise ValueError(f"problem.inlet_windows={problem.inlet_windows}: a step has one time level; build the "
                         "problem with inlet_windows=1 for step_op, or use rollout_op")
    steps, controls, params, initial, adjoint = check_rollout(problem, 1, _Cotangent(None), A.StoreAll(), controls,
                                                               params, None)
    return Step(_register(problem, 1, None, adjoint, controls, params, initial))
