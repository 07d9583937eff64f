"""Recover the initial vortex field of a decaying 2D periodic flow from one velocity snapshot.

Truth: two Taylor-Green cells plus a Gaussian vortex, divergence-free by a spectral curl of a stream
function. Unknown: the whole initial velocity field (2 N^2 numbers, scaled by the peak speed), mapped
to the initial populations through the equilibrium (``equilibrium_adjoint``). Loss: the snapshot
misfit after T steps relative to the snapshot's own energy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import adjoint, io, losses
from ..problem import Problem
from .common import Case, panels_png, velocity, vorticity

DEFAULTS = dict(resolution=48, steps=200, iterations=80)
MIN_RESOLUTION, MIN_STEPS = 8, 1
OMEGA = 1.6
U_PEAK = 0.05


def true_velocity(n: int) -> np.ndarray:
    """Initial velocity (n, n, 2): Taylor-Green modes (1,1), (2,1) and a Gaussian vortex, peak U_PEAK."""
    x = np.arange(n) + 0.5
    X, Y = np.meshgrid(x, x, indexing="ij")
    k = 2 * np.pi / n
    psi = np.sin(k * X) * np.sin(k * Y) + 0.5 * np.sin(2 * k * X + 0.7) * np.cos(k * Y)
    sigma = n / 9
    for dx in (-n, 0, n):  # periodic images keep the Gaussian vortex smooth across the faces
        for dy in (-n, 0, n):
            r2 = (X - 0.3 * n + dx) ** 2 + (Y - 0.65 * n + dy) ** 2
            psi += 0.8 * np.exp(-r2 / (2 * sigma**2))
    # spectral curl: exactly periodic and discretely divergence-free on the Fourier grid
    kk = 2 * np.pi * np.fft.fftfreq(n)
    KX, KY = np.meshgrid(kk, kk, indexing="ij")
    ph = np.fft.fft2(psi)
    u = np.real(np.fft.ifft2(1j * KY * ph))
    v = np.real(np.fft.ifft2(-1j * KX * ph))
    vel = np.stack([u, v], axis=-1)
    return vel * (U_PEAK / np.abs(vel).max())


class InitialState(Case):
    name = "initial-state"

    def __init__(self, s):
        n, self.steps = s.resolution, s.steps
        self.problem = Problem((n, n), "D2Q9", omega=OMEGA, precision=s.precision, device=s.device)
        self.params = self.problem.parameters()
        self.truth = true_velocity(n)
        final = self._rollout(self.truth)
        self.target = velocity(self.problem, final)
        self.loss = losses.VelocityMismatch(target=self.target, weight=1.0 / float(np.sum(self.target**2)))
        self.rho = np.ones((n, n))
        self.x0 = np.zeros(self.truth.size)
        self.bounds = None

    def _rollout(self, u):
        from ..solver import Solver
        return Solver(self.problem).run(self.problem.state(1.0, u), self.steps, self.params)

    def field(self, x):
        return U_PEAK * x.reshape(self.truth.shape)

    def value_and_grad(self, x, stage):
        u = self.field(x)
        value, g = adjoint.value_and_grad(self.problem, self.params, self.problem.state(self.rho, u), self.steps,
                                          self.loss, wrt=("initial",))
        _, g_u = adjoint.equilibrium_adjoint(self.problem, self.rho, u, g.initial)
        return value, U_PEAK * g_u.ravel()

    def metrics(self, x):
        err = np.linalg.norm(self.field(x) - self.truth) / np.linalg.norm(self.truth)
        return dict(relative_error_initial_velocity=float(err),
                    snapshot_energy_ratio=float(np.sum(self.target**2) / np.sum(self.truth**2)))

    def parameters(self, x):
        return dict(initial_velocity=self.field(x))

    def write_outputs(self, x, x_start, out: Path):
        u = self.field(x)
        files = [panels_png(out / "fields.png", [("start (zero)", vorticity(self.field(x_start))),
                                                 ("recovered", vorticity(u)), ("truth", vorticity(self.truth)),
                                                 (f"observed, step {self.steps}", vorticity(self.target))],
                            title="initial-state: vorticity of the initial field", cmap="RdBu_r", symmetric=True)]
        files.append(io.write_vti(out / "final_flow.vti", self.problem, self._rollout(u), overwrite=True))
        files.append(io.write_vti(out / "recovered_initial.vti", self.problem, self.problem.state(1.0, u),
                                  overwrite=True))
        return files


def make_case(settings):
    return InitialState(settings)
