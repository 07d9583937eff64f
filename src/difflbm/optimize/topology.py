"""Density-based topology optimization of a 2D diffuser for low pressure drop.

Setting (after Borrvall & Petersson 2003's diffuser; LBM form after Pingen, Evgrafov & Maute 2007):
a channel of height H and length 1.5 H, uniform VelocityInlet over the whole x- face, PressureOutlet
on the middle third of the x+ face (the rest of that face is wall), walls on y-/y+. The solid
fraction field (0 fluid, 1 solid) is designed in the interior; a fixed share ``SOLID_VOLUME`` of the
design cells must be solid. Objective: inlet minus outlet mean pressure, averaged over the second
half of the rollout, relative to the same quantity for the empty channel.

Design chain x -> filtered x~ (linear cone filter, Bruns & Tortorelli 2001) -> s = H(x~; beta, eta)
(smoothed Heaviside, Wang, Lazarov & Sigmund 2011) with eta chosen per design so that mean(s) equals
the volume target (volume-preserving threshold, Xu, Cai & Cheng 2010); beta doubles per stage
(continuation) so the final design is close to 0/1. The solver sees s / (1 + q (1 - s)) (RAMP,
Stolpe & Svanberg 2001) with q lowered per stage from 5 (gray leaks: the uniform start is not a
near-blocked porous plug) to -0.5 (gray is penalised, so the design turns 0/1). The volume constraint then holds exactly and
L-BFGS-B only needs the bounds 0 <= x <= 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import adjoint, io, losses
from ..problem import PressureOutlet, Problem, VelocityInlet, Wall
from ..solver import Solver
from .common import Case, panels_png, velocity

DEFAULTS = dict(resolution=20, steps=400, iterations=64)
MIN_RESOLUTION, MIN_STEPS = 12, 20
OMEGA = 0.8
U_IN = 0.02
SOLID_VOLUME = 0.35
FILTER_RADIUS = 1.8
BETAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
# RAMP q per stage: convex early (gray leaks, the start is not a plug), concave at the end (gray acts
# more solid than it counts in the volume, so gray cells no longer pay off and the design turns 0/1)
RAMP_QS = (5.0, 5.0, 3.0, 1.0, 0.0, -0.3, -0.5, -0.5)


# ------------------------------------------------------------------ filter and projection (numpy)
def cone_kernel(radius: float) -> np.ndarray:
    r = int(np.ceil(radius)) - 1 if radius == int(radius) else int(np.floor(radius))
    d = np.arange(-r, r + 1)
    X, Y = np.meshgrid(d, d, indexing="ij")
    return np.maximum(0.0, radius - np.hypot(X, Y))


class DensityFilter:
    """x~ = (K * x) / (K * 1) over the design cells only (zero padding), and its transpose."""

    def __init__(self, design: np.ndarray, radius: float):
        from scipy.ndimage import convolve

        self.design, self.k = design, cone_kernel(radius)
        self._conv = lambda a: convolve(a, self.k, mode="constant", cval=0.0)
        self.norm = np.where(design, self._conv(design.astype(np.float64)), 1.0)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.design, self._conv(np.where(self.design, x, 0.0)) / self.norm, 0.0)

    def backward(self, g: np.ndarray) -> np.ndarray:
        # the kernel is symmetric, so K^T is a convolution with K again
        return np.where(self.design, self._conv(np.where(self.design, g, 0.0) / self.norm), 0.0)


def heaviside(x, beta, eta):
    a, b = np.tanh(beta * eta), np.tanh(beta * (1.0 - eta))
    t = np.tanh(beta * (x - eta))
    s = (a + t) / (a + b)
    ds_dx = beta * (1 - t**2) / (a + b)
    da, db = beta * (1 - a**2), -beta * (1 - b**2)
    ds_deta = ((da - beta * (1 - t**2)) * (a + b) - (a + t) * (da + db)) / (a + b) ** 2
    return s, ds_dx, ds_deta


def volume_preserving(xf, beta, volume):
    """Threshold eta in [0, 1] with mean(H(xf; beta, eta)) = volume; returns s, ds/dxf as a function."""
    from scipy.optimize import brentq

    def excess(eta):
        return heaviside(xf, beta, eta)[0].mean() - volume

    lo, hi = excess(0.0), excess(1.0)
    if lo <= 0:
        eta = 0.0
    elif hi >= 0:
        eta = 1.0
    else:
        eta = brentq(excess, 0.0, 1.0, xtol=1e-14)
    s, ds_dx, ds_deta = heaviside(xf, beta, eta)
    pinned = eta in (0.0, 1.0)
    denom = ds_deta.sum()

    def vjp(g):
        # eta(xf) by the implicit function theorem: d eta / d xf_j = -ds_dx_j / sum_i ds_deta_i
        if pinned or denom == 0:
            return g * ds_dx
        return g * ds_dx - ds_dx * (g * ds_deta).sum() / denom

    return s, vjp, eta


class Topology(Case):
    name = "topology"

    def __init__(self, s):
        h, self.steps = s.resolution, s.steps
        nx = (3 * h) // 2
        self.shape = (nx, h)
        outlet = np.zeros(self.shape, dtype=bool)
        outlet[nx - 1, h // 3: h - h // 3] = True
        self.outlet = outlet
        design = np.zeros(self.shape, dtype=bool)
        design[3: nx - 3, :] = True
        self.design = design
        self.stages = list(zip(BETAS, RAMP_QS))
        self.filter = DensityFilter(design, FILTER_RADIUS * h / 24)
        self.problem = Problem(self.shape, "D2Q9", omega=OMEGA, precision=s.precision, device=s.device,
                               solid_fraction=np.zeros(self.shape),
                               boundaries=[VelocityInlet(face="x-", velocity=(U_IN, 0.0)), Wall(face="y-"),
                                           Wall(face="y+"), PressureOutlet(mask=outlet, density=1.0)])
        self.params = self.problem.parameters()
        a = np.zeros(self.shape, dtype=bool)
        a[1, :] = True
        b = np.zeros(self.shape, dtype=bool)
        b[nx - 2, h // 3: h - h // 3] = True
        start = self.steps // 2
        self.loss_raw = losses.PressureDrop(a, b, when="every", start=start, weight=1.0 / (self.steps - start + 1))
        self.reference = self._objective(np.zeros(self.shape))
        self.loss = losses.PressureDrop(a, b, when="every", start=start,
                                        weight=1.0 / ((self.steps - start + 1) * self.reference))
        self.n = int(design.sum())
        self.x0 = np.full(self.n, SOLID_VOLUME)
        self.bounds = [(0.0, 1.0)] * self.n

    def _assign(self, s, q=0.0):
        phys = s / (1 + q * (1 - s))
        self.params.solid_fraction.assign(phys.ravel().astype(self.params.solid_fraction.numpy().dtype))

    def _objective(self, solid, q=0.0):
        self._assign(solid, q)
        return adjoint.rollout_loss(self.problem, self.params, self.problem.state(), self.steps, self.loss_raw)

    def design_field(self, x, beta):
        full = np.zeros(self.shape)
        full[self.design] = x
        xf = self.filter.forward(full)
        s_d, vjp, eta = volume_preserving(xf[self.design], beta, SOLID_VOLUME)
        s = np.zeros(self.shape)
        s[self.design] = s_d
        return s, vjp, eta

    def value_and_grad(self, x, stage):
        beta, q = stage
        s, vjp, _ = self.design_field(x, beta)
        self._assign(s, q)
        value, g = adjoint.value_and_grad(self.problem, self.params, self.problem.state(), self.steps, self.loss,
                                          wrt=("solid_fraction",))
        g = g.solid_fraction.reshape(self.shape) * (1 + q) / (1 + q * (1 - s)) ** 2
        gd = np.zeros(self.shape)
        gd[self.design] = vjp(g[self.design])
        return value, self.filter.backward(gd)[self.design]

    def metrics(self, x):
        s_start = self.design_field(self.x0, BETAS[0])[0]
        s = self.design_field(x, BETAS[-1])[0]
        crisp = np.round(s)
        j_start = self._objective(s_start, RAMP_QS[0]) / self.reference
        j_final = self._objective(s, RAMP_QS[-1]) / self.reference
        j_crisp = self._objective(crisp) / self.reference
        sd = s[self.design]
        near = np.mean((sd <= 0.05) | (sd >= 0.95))
        return dict(objective_start=j_start, objective_final=j_final, objective_rounded_final=j_crisp,
                    objective_improvement=j_start / j_final, fraction_near_0_or_1=float(near),
                    solid_volume_final=float(sd.mean()), solid_volume_target=SOLID_VOLUME,
                    pressure_drop_empty_channel=self.reference)

    def parameters(self, x):
        return dict(solid_fraction=self.design_field(x, BETAS[-1])[0], design_variables=x)

    def write_outputs(self, x, x_start, out: Path):
        s0 = self.design_field(x_start, BETAS[0])[0]
        s = self.design_field(x, BETAS[-1])[0]
        self._assign(s, RAMP_QS[-1])
        final = Solver(self.problem).run(self.problem.state(), self.steps, self.params)
        speed = np.linalg.norm(velocity(self.problem, final), axis=-1)
        files = [io.write_vti(out / "final_flow.vti", self.problem, final, overwrite=True)]
        files.append(panels_png(out / "fields.png", [("start: solid fraction", s0), ("final: solid fraction", s),
                                                     ("final: speed", speed)],
                                title="topology: diffuser, minimum pressure drop", cmap="Greys", share=False,
                                limits=[(0, 1), (0, 1), None]))
        return files


def make_case(settings):
    return Topology(settings)
