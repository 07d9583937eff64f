"""Check adjoint gradients against central finite differences along random directions."""

from __future__ import annotations

import numpy as np
import warp as wp

from .adjoint import GRAD_TARGETS, value_and_grad, rollout_loss
from .problem import Parameters, Problem, State

__all__ = ["gradcheck"]


def _perturbed(problem, params, initial, name, direction, h):
    """Copies of (params, initial) moved by h * direction along control ``name``."""
    p2 = Parameters(problem)
    for n in Parameters.NAMES:
        wp.copy(getattr(p2, n), getattr(params, n))
    s2 = initial.copy()
    target = s2.f if name == "initial" else getattr(p2, name)
    base = target.numpy()
    target.assign((base.astype(np.float64) + h * direction).astype(base.dtype))
    return p2, s2


def gradcheck(problem: Problem, params: Parameters, initial: State, steps: int, loss, wrt=("initial",),
              directions: int = 2, eps: float | None = None, seed: int = 0, adjoint=None) -> dict:
    """Relative error of the adjoint directional derivative vs central differences, per control.

    For each name in ``wrt`` and each random unit direction d: compares <grad, d> with
    (L(x + h d) - L(x - h d)) / 2h. Returns {name: max relative error over directions} and the
    raw pairs under "pairs". Use float64 problems: float32 differences are dominated by round-off.
    """
    rng = np.random.default_rng(seed)
    wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    for name in wrt:
        if name not in GRAD_TARGETS:
            raise ValueError(f"wrt={name!r} is not differentiable; allowed: {', '.join(GRAD_TARGETS)}")
    from .adjoint import _is_used
    for name in wrt:
        if not _is_used(problem, name):
            raise ValueError(f"wrt={name!r} is not a control of this problem (no such boundary, force or field)")
    h = eps if eps is not None else (1e-6 if problem.precision == "float64" else 1e-2)
    _, g = value_and_grad(problem, params, initial, steps, loss, adjoint=adjoint, wrt=wrt)
    result, pairs = {}, {}
    for name in wrt:
        grad = g.initial if name == "initial" else getattr(g, name)
        shape = (initial.f if name == "initial" else getattr(params, name)).numpy().shape
        grad = np.asarray(grad, dtype=np.float64).reshape(shape)
        errs, pr = [], []
        for _ in range(directions):
            d = rng.standard_normal(shape)
            if name == "solid_fraction":
                d = np.abs(d)  # stay inside [0, 1] from an interior point
            d /= np.linalg.norm(d)
            pp, sp = _perturbed(problem, params, initial, name, d, h)
            pm, sm = _perturbed(problem, params, initial, name, d, -h)
            fd = (rollout_loss(problem, pp, sp, steps, loss) - rollout_loss(problem, pm, sm, steps, loss)) / (2 * h)
            ad = float(np.sum(grad * d))
            scale = max(abs(fd), abs(ad), 1e-300)
            errs.append(abs(fd - ad) / scale)
            pr.append((ad, fd))
        result[name] = max(errs)
        pairs[name] = pr
    result["pairs"] = pairs
    return result
