"""Identify the relaxation rate omega (viscosity nu = (1/omega - 1/2)/3) from velocity snapshots.

Known flow: a decaying 2D periodic field (Taylor-Green modes plus a Gaussian vortex, the same family
as ``initial-state``) started from rest density and a known velocity. Observations: the velocity
every ``steps // 10`` steps (``VelocityMismatch(when="every")`` per snapshot). Unknown: scalar omega,
bounded to [0.5, 1.95]; truth 1.3, start 1.0. The loss is relative to the snapshots' energy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import adjoint, io, losses
from ..problem import Problem
from ..solver import Solver
from .common import Case, panels_png, velocity, vorticity
from .initial_state import true_velocity

DEFAULTS = dict(resolution=32, steps=200, iterations=20)
MIN_RESOLUTION, MIN_STEPS = 8, 10
OMEGA_TRUE = 1.3
OMEGA_START = 1.0
BOUNDS = (0.5, 1.95)
SNAPSHOTS = 10


def viscosity(omega: float) -> float:
    return (1.0 / omega - 0.5) / 3.0


class Viscosity(Case):
    name = "viscosity"

    def __init__(self, s):
        n, self.steps = s.resolution, s.steps
        self.problem = Problem((n, n), "D2Q9", omega=OMEGA_TRUE, precision=s.precision, device=s.device)
        self.params = self.problem.parameters()
        self.u0 = true_velocity(n)
        every = max(1, self.steps // SNAPSHOTS)
        self.snap_steps = list(range(every, self.steps + 1, every))
        solver = Solver(self.problem)
        snaps, a = {}, self.problem.state(1.0, self.u0)
        b = a.copy()
        for t in range(self.steps):
            solver.step(a, b, self.params)
            a, b = b, a
            if t + 1 in self.snap_steps:
                snaps[t + 1] = velocity(self.problem, a)
        self.snaps = snaps
        norm = sum(float(np.sum(v**2)) for v in snaps.values())
        self.loss = losses.VelocityMismatchSeries(snaps, weight=1.0 / norm)
        self.x0 = np.array([OMEGA_START])
        self.bounds = [BOUNDS]

    def _set(self, omega):
        self.params.omega.assign(np.array([omega], dtype=self.params.omega.numpy().dtype))

    def value_and_grad(self, x, stage):
        self._set(float(x[0]))
        value, g = adjoint.value_and_grad(self.problem, self.params, self.problem.state(1.0, self.u0), self.steps,
                                          self.loss, wrt=("omega",))
        return value, np.array([float(g.omega.sum())])

    def metrics(self, x):
        om = float(x[0])
        nu, nu_true = viscosity(om), viscosity(OMEGA_TRUE)
        return dict(omega_recovered=om, omega_true=OMEGA_TRUE, viscosity_recovered=nu, viscosity_true=nu_true,
                    relative_error_viscosity=abs(nu - nu_true) / nu_true)

    def parameters(self, x):
        return dict(omega=float(x[0]), viscosity=viscosity(float(x[0])))

    def write_outputs(self, x, x_start, out: Path):
        solver = Solver(self.problem)
        finals = {}
        for label, om in (("start", float(x_start[0])), ("final", float(x[0]))):
            self._set(om)
            finals[label] = solver.run(self.problem.state(1.0, self.u0), self.steps, self.params)
        last = self.snap_steps[-1]
        files = [io.write_vti(out / "final_flow.vti", self.problem, finals["final"], overwrite=True)]
        files.append(panels_png(out / "fields.png", [
            (f"start omega={float(x_start[0]):.3f}", vorticity(velocity(self.problem, finals["start"]))),
            (f"identified omega={float(x[0]):.4f}", vorticity(velocity(self.problem, finals["final"]))),
            (f"observed (omega={OMEGA_TRUE})", vorticity(self.snaps[last]))],
            title=f"viscosity: vorticity at step {self.steps}", cmap="RdBu_r", symmetric=True))
        return files


def make_case(settings):
    return Viscosity(settings)
