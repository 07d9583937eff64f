"""What both bridges share: the controls they expose and the checks of a rollout's arguments.

Imports neither torch nor jax.
"""

from __future__ import annotations

from .. import adjoint as A
from ..losses import Loss
from ..problem import Parameters, Problem

CONTROLS = A.GRAD_TARGETS
VECTOR_CONTROLS = ("force", "wall_velocity", "inlet_velocity")


def control_shape(problem: Problem, params: Parameters, name: str) -> tuple:
    """The array shape a control has at a bridge: (Q, *shape) for ``initial``, vec3 fields end in 3."""
    if name == "initial":
        return (problem.lattice.q,) + problem.shape
    shape = tuple(getattr(params, name).shape)
    return shape + (3,) if name in VECTOR_CONTROLS else shape


def check_rollout(problem, steps, loss, adjoint, controls, params, initial):
    """Validate a bridge rollout's arguments; returns (steps, controls, params, initial, adjoint)
    with defaults filled in (the problem's parameters, the state at rest, checkpointing)."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem={problem!r} must be a difflbm.Problem")
    if problem.precision == "float16":
        raise ValueError("precision='float16' (shifted float16 storage) is not supported by the bridges; use float32")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss={loss!r} must be a difflbm.losses.Loss")
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    controls = (controls,) if isinstance(controls, str) else tuple(controls)
    if not controls:
        raise ValueError(f"controls is empty; allowed: {', '.join(CONTROLS)}")
    for name in controls:
        if name not in CONTROLS:
            raise ValueError(f"controls={name!r} is not differentiable; allowed: {', '.join(CONTROLS)}")
    if len(set(controls)) != len(controls):
        raise ValueError(f"controls={controls} names a control twice")
    params = problem.parameters() if params is None else params
    initial = problem.state() if initial is None else initial
    if params.problem is not problem or initial.problem is not problem:
        raise ValueError("params and initial must belong to problem")
    adjoint = A.Checkpointed() if adjoint is None else adjoint
    A._schedule(adjoint, max(steps, 1), initial.f.capacity, problem.device)  # reject a bad strategy now, not in backward
    return steps, controls, params, initial, adjoint
