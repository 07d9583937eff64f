"""JAX bridge: a difflbm rollout as a ``jax.custom_vjp`` function that works under ``jax.jit``.

The Warp code runs on the host through ``jax.pure_callback``: JAX hands numpy arrays to the callback,
which copies them to the problem's device, runs the rollout (or its checkpointed adjoint) and returns
numpy arrays. Float64 problems need ``jax_enable_x64``; without it JAX silently makes float32 arrays,
which the bridge rejects rather than downcasting the solver.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import warp as wp

from .. import adjoint as A
from .. import kernels as K
from ..losses import Loss
from ..problem import Parameters, Problem, State
from ._common import CONTROLS, VECTOR_CONTROLS, check_rollout, control_shape

__all__ = ["rollout_fn", "CONTROLS"]





def rollout_fn(problem: Problem, steps: int, loss: Loss, adjoint=None, controls=("initial",),
               params: Parameters | None = None, initial: State | None = None):
    """Bind a rollout of ``steps`` steps and ``loss`` on ``problem`` as a differentiable JAX function.

    Returns ``f(*arrays) -> scalar`` taking one array per name in ``controls`` (``initial`` of shape
    (Q, *shape); parameters in the layout of :class:`~difflbm.Parameters`, vector fields ending in 3).
    ``f`` has a custom VJP that runs :func:`difflbm.adjoint.value_and_grad` with ``adjoint``
    (default checkpointed), and works under ``jax.jit``, ``jax.grad`` and ``jax.value_and_grad``.
    Controls not given come from ``params`` and ``initial`` (defaults: the problem's values, rest state).
    """
    steps, controls, base_params, base_initial, adjoint = check_rollout(problem, steps, loss, adjoint, controls,
                                                                        params, initial)
    shapes = tuple(control_shape(problem, base_params, n) for n in controls)
    np_dtype = np.dtype(np.float32 if problem.precision == "float32" else np.float64)
    wp_dtype = K.wp_dtype(problem.precision)
    vec3 = wp.types.vector(3, wp_dtype)

    def bind(arrays):
        # Host arrays from the callback are copied to the problem's device; each call gets its own.
        ps = Parameters.__new__(Parameters)
        ps.problem = problem
        for name in Parameters.NAMES:
            setattr(ps, name, getattr(base_params, name))
        st = base_initial
        for name, x in zip(controls, arrays):
            x = np.ascontiguousarray(x, dtype=np_dtype)
            if name == "initial":
                st = State(problem, wp.array(x.reshape(problem.lattice.q, problem.cell_count), dtype=wp_dtype,
                                             device=problem.device))
            else:
                setattr(ps, name, wp.array(x, dtype=vec3 if name in VECTOR_CONTROLS else wp_dtype,
                                           device=problem.device))
        return ps, st

    def host_loss(*arrays):
        ps, st = bind(arrays)
        return np.asarray(A.rollout_loss(problem, ps, st, steps, loss), dtype=np_dtype)

    def host_grad(*arrays):
        ps, st = bind(arrays)
        _, g = A.value_and_grad(problem, ps, st, steps, loss, adjoint=adjoint, wrt=controls)
        return tuple(np.asarray(getattr(g, n), dtype=np_dtype).reshape(s) for n, s in zip(controls, shapes))

    out_spec = jax.ShapeDtypeStruct((), np_dtype)
    grad_spec = tuple(jax.ShapeDtypeStruct(s, np_dtype) for s in shapes)

    @jax.custom_vjp
    def rollout(*xs):
        return jax.pure_callback(host_loss, out_spec, *xs, vmap_method="sequential")

    def rollout_fwd(*xs):
        return rollout(*xs), xs

    def rollout_bwd(xs, ct):
        grads = jax.pure_callback(host_grad, grad_spec, *xs, vmap_method="sequential")
        return tuple(ct * g for g in grads)

    rollout.defvjp(rollout_fwd, rollout_bwd)

    def f(*xs):
        """The rollout's loss for one array per control in ``controls``."""
        if len(xs) != len(controls):
            raise ValueError(f"got {len(xs)} arrays; this rollout takes {len(controls)}: {', '.join(controls)}")
        checked = []
        for name, shape, x in zip(controls, shapes, xs):
            x = jnp.asarray(x)
            # Shapes and dtypes are static under jit, so these checks run once at trace time.
            if x.dtype != np_dtype:
                hint = " (enable jax_enable_x64 for float64 problems)" if np_dtype == np.float64 else ""
                raise ValueError(f"{name} has dtype={x.dtype}; the problem's precision is {problem.precision}, "
                                 f"so allowed: {np_dtype}{hint}")
            if tuple(x.shape) != shape:
                raise ValueError(f"{name} has shape={tuple(x.shape)}; allowed: {shape}")
            checked.append(x)
        return rollout(*checked)

    f.controls, f.shapes = controls, shapes
    return f
