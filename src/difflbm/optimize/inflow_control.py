"""Find a time-varying inlet velocity profile from velocities observed downstream.

Channel of height H and length 3H: VelocityInlet on x-, walls on y-/y+, PressureOutlet on x+, a small
square obstacle (Wall mask) below the centre line. The inlet profile is piecewise constant in time
(``inlet_windows`` windows). Unknown: the streamwise inlet velocity per inlet cell and window (scaled
by the peak speed; the transverse component stays zero). Loss: velocity misfit over every fluid cell
from 2 cells downstream of the inlet to the outlet, summed over every ``EVERY``-th step, relative to
the target's own energy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import adjoint, io, losses
from ..problem import PressureOutlet, Problem, VelocityInlet, Wall
from ..solver import Solver
from .common import Case, panels_png, velocity

DEFAULTS = dict(resolution=20, steps=320, iterations=60)
MIN_RESOLUTION, MIN_STEPS = 8, 8
WINDOWS = 4
OMEGA = 1.2
U_PEAK = 0.05
EVERY = 2


def true_profile(h: int, windows: int) -> np.ndarray:
    """ux (windows, h): a parabola whose amplitude changes per window, plus a skew that changes sign."""
    y = (np.arange(h) + 0.5) / h
    amp = 0.6 + 0.4 * np.sin(np.linspace(0.3, 2.8, windows))
    skew = 0.25 * np.cos(np.linspace(0.0, np.pi, windows))
    base = 4 * y * (1 - y)
    return U_PEAK * (amp[:, None] * base[None, :] + skew[:, None] * base * (y - 0.5)[None, :] * 4)


class InflowControl(Case):
    name = "inflow-control"

    def __init__(self, s):
        h, self.steps = s.resolution, s.steps
        nx = 3 * h
        self.shape = (nx, h)
        obstacle = np.zeros(self.shape, dtype=bool)
        side = max(2, h // 6)
        x0, y0 = h // 1, h // 2 - side // 2 - max(1, h // 10)
        obstacle[x0:x0 + side, y0:y0 + side] = True
        self.obstacle = obstacle
        self.problem = Problem(self.shape, "D2Q9", omega=OMEGA, precision=s.precision, device=s.device,
                               inlet_windows=WINDOWS,
                               boundaries=[VelocityInlet(face="x-", velocity=(0.0, 0.0)), Wall(face="y-"),
                                           Wall(face="y+"), PressureOutlet(face="x+", density=1.0),
                                           Wall(mask=obstacle)])
        self.params = self.problem.parameters()
        _, start, stop, cells = self.problem.inlet_groups[0]
        # inlet cells are those of column x = 0, in y order (cell index = x * ny + y)
        assert np.array_equal(cells, np.arange(h)) and (start, stop) == (0, h)
        self.truth = true_profile(h, WINDOWS)
        self._set(self.truth / U_PEAK)
        self.target_state = Solver(self.problem).run(self.problem.state(), self.steps, self.params)
        self.targets = self._observe_truth()
        self.x0 = np.zeros(self.truth.size)
        self.bounds = None

    def _observe_truth(self):
        region = np.zeros(self.shape, dtype=bool)
        region[2:] = True
        region &= ~self.obstacle
        self.region = region
        # one term for every observed step (the targets differ in time)
        snaps = {}
        solver = Solver(self.problem)
        a = self.problem.state()
        b = a.copy()
        for t in range(self.steps):
            solver.step(a, b, self.params, solver.window(t, self.steps))
            a, b = b, a
            if (t + 1) % EVERY == 0:
                snaps[t + 1] = velocity(self.problem, a)
        norm = sum(float(np.sum(v[region] ** 2)) for v in snaps.values())
        self.loss = losses.VelocityMismatchSeries(snaps, region=region, weight=1.0 / norm)
        return snaps

    def _set(self, x):
        vel = np.zeros((WINDOWS, self.shape[1], 3))
        vel[..., 0] = U_PEAK * x.reshape(WINDOWS, self.shape[1])
        self.params.inlet_velocity.assign(vel.astype(self.params.inlet_velocity.numpy().dtype))

    def value_and_grad(self, x, stage):
        self._set(x)
        value, g = adjoint.value_and_grad(self.problem, self.params, self.problem.state(), self.steps, self.loss,
                                          wrt=("inlet_velocity",))
        return value, U_PEAK * g.inlet_velocity[..., 0].ravel()

    def profile(self, x):
        return U_PEAK * x.reshape(WINDOWS, self.shape[1])

    def metrics(self, x):
        err = np.linalg.norm(self.profile(x) - self.truth) / np.linalg.norm(self.truth)
        return dict(relative_error_inlet_profile=float(err),
                    max_abs_error_inlet_velocity=float(np.abs(self.profile(x) - self.truth).max()))

    def parameters(self, x):
        return dict(inlet_ux=self.profile(x))

    def write_outputs(self, x, x_start, out: Path):
        from matplotlib.figure import Figure

        self._set(x)
        final = Solver(self.problem).run(self.problem.state(), self.steps, self.params)
        files = [io.write_vti(out / "final_flow.vti", self.problem, final, overwrite=True)]
        speed = lambda st: np.linalg.norm(velocity(self.problem, st), axis=-1)
        self._set(x_start)
        start = Solver(self.problem).run(self.problem.state(), self.steps, self.params)
        self._set(x)
        files.append(panels_png(out / "flow.png", [("start: final speed", speed(start)),
                                                   ("optimized: final speed", speed(final)),
                                                   ("target: final speed", speed(self.target_state))],
                                title="inflow-control: speed at the last step"))
        h = self.shape[1]
        fig = Figure(figsize=(9, 3.0))
        y = np.arange(h) + 0.5
        for w in range(WINDOWS):
            ax = fig.add_subplot(1, WINDOWS, w + 1)
            ax.plot(self.profile(x_start)[w], y, ":", color="gray", label="start")
            ax.plot(self.truth[w], y, "-", color="k", lw=2, label="truth")
            ax.plot(self.profile(x)[w], y, "o", ms=3, color="C3", label="recovered")
            ax.set_title(f"window {w + 1}/{WINDOWS}", fontsize=9)
            ax.set_xlabel("inlet ux")
            if w == 0:
                ax.set_ylabel("y (cells)")
                ax.legend(fontsize=7)
        fig.suptitle("inflow-control: inlet profile per time window", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "fields.png", dpi=80)
        files.append(str(out / "fields.png"))
        return files


def make_case(settings):
    return InflowControl(settings)
