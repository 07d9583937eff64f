"""2D lid-driven cavity at steady state vs Ghia, Ghia & Shin (1982) centreline velocities.

Walls are half-way bounce-back, so each wall lies half a cell outside the first and last cell:
with N cells across, cell centre j sits at (j + 1/2) / N of the unit cavity. The lid is the moving
wall on y+ (velocity (U, 0)), the other faces stationary walls; the reference values are read from the CSV files in ``data/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..problem import Problem, Wall
from ..solver import Solver

DATA = Path(__file__).with_name("data")
REYNOLDS = (100, 400, 1000)
# Ghia's Table II, Re 400, x = 0.9063: v = -0.23827 breaks the smooth profile between -0.228
# (x = 0.9453) and -0.450 (x = 0.8594), a likely misprint; solutions here give -0.383 at N = 64
# and 128. Excluded from max_err, reported as "excluded".
MISPRINTS = {("v", 400, 0.9063)}
OMEGA_MAX = 1.95  # BGK above this is close to its stability limit in the lid corners


def read_ghia(name: str) -> dict:
    """Columns of one Ghia (1982) table from ``data/`` as float arrays, keyed by header name."""
    path = DATA / name
    rows = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    header = rows[0].split(",")
    values = np.array([[float(v) for v in r.split(",")] for r in rows[1:]])
    return {h: values[:, k] for k, h in enumerate(header)}


def velocity(problem: Problem, f: np.ndarray) -> np.ndarray:
    """Velocity field, shape (*shape, D), from populations of shape (Q, *shape) (no body force)."""
    c = problem.lattice.velocities
    rho = f.sum(0)
    return np.stack([np.tensordot(c[:, a], f, 1) / rho for a in range(problem.lattice.dim)], -1)


def run_to_steady(solver: Solver, state, params, scale: float, tol: float, interval: int, max_steps: int):
    """Step until max |u(t) - u(t - interval)| / scale < tol; returns (state, steps, last change)."""
    p = solver.problem
    a, b = state.copy(), state.copy()
    prev = velocity(p, a.populations())
    t, change = 0, float("inf")
    solver.update_wall_term(params)
    while t < max_steps:
        n = min(interval, max_steps - t)
        for _ in range(n):
            solver.step(a, b, params, update_walls=False)
            a, b = b, a
        t += n
        solver.check_finite(a, t)
        u = velocity(p, a.populations())
        change = float(np.abs(u - prev).max() / scale)
        prev = u
        if change < tol:
            break
    return a, t, change


def run(resolution=None, device=None, precision="float64", reynolds=100, lid_velocity=0.1, tol=1e-6,
        max_steps=None, collision="bgk", **_):
    if reynolds not in REYNOLDS:
        raise ValueError(f"reynolds={reynolds!r} is not tabulated by Ghia et al.; allowed: {', '.join(map(str, REYNOLDS))}")
    N = int(resolution or 64)
    if N < 8:
        raise ValueError(f"resolution={N} is too coarse; allowed: >= 8 cells")
    U = float(lid_velocity)
    if not (0.0 < U <= 0.15):
        raise ValueError(f"lid_velocity={U} is outside (0, 0.15]; 0.05 to 0.1 keeps Mach <= 0.17")
    nu = U * N / reynolds
    omega = 1.0 / (3.0 * nu + 0.5)
    if omega >= OMEGA_MAX:
        need = int(np.ceil(reynolds * (1.0 / OMEGA_MAX - 0.5) / (3.0 * U))) + 1
        raise ValueError(f"resolution={N} gives omega={omega:.3f} at reynolds={reynolds}; allowed omega < {OMEGA_MAX}: "
                         f"use resolution >= {need} or a larger lid_velocity")
    # the slowest mode decays on a viscous time N^2/nu; 3 of them bounds any run that converges
    max_steps = int(max_steps or max(20000, 3 * N * N / nu))
    interval = max(100, N)
    # an axis with no boundary on either face is periodic, so the side walls are named; they come
    # before the lid so that corner links take the stationary group (the smaller one wins)
    walls = [Wall(face="x-"), Wall(face="x+"), Wall(face="y-"), Wall(face="y+", velocity=(U, 0.0))]
    p = Problem((N, N), "D2Q9", collision, omega=omega, boundaries=walls, precision=precision, device=device)
    solver = Solver(p)
    state, steps, change = run_to_steady(solver, p.state(), p.parameters(), U, tol, interval, max_steps)
    u = velocity(p, state.populations()) / U
    x = (np.arange(N) + 0.5) / N
    # centreline at x = 1/2: average of the two middle columns when N is even, by the same linear rule
    u_line = np.array([np.interp(0.5, x, u[:, j, 0]) for j in range(N)])
    v_line = np.array([np.interp(0.5, x, u[i, :, 1]) for i in range(N)])
    gu = read_ghia("ghia1982_u_vertical_centerline.csv")
    gv = read_ghia("ghia1982_v_horizontal_centerline.csv")
    # wall values of the table are boundary conditions, not solution points: compare inside only
    yu = gu["y"]
    inside_u = (yu > 0) & (yu < 1)
    xv = gv["x"]
    inside_v = (xv > 0) & (xv < 1)
    excluded = []
    for comp, re_, pos in MISPRINTS:
        if re_ == reynolds and comp == "v":
            bad = np.isclose(xv, pos)
            excluded += [{"component": "v", "x": pos, "ghia": float(gv[f"v_Re{reynolds}"][bad][0]),
                          "computed": float(np.interp(pos, x, v_line))}]
            inside_v &= ~bad
    err_u = np.abs(np.interp(yu[inside_u], x, u_line) - gu[f"u_Re{reynolds}"][inside_u])
    err_v = np.abs(np.interp(xv[inside_v], x, v_line) - gv[f"v_Re{reynolds}"][inside_v])
    err = float(max(err_u.max(), err_v.max()))
    mass = float(state.populations().sum())
    return {
        "reynolds": reynolds, "resolution": N, "lid_velocity": U, "omega": omega, "precision": precision,
        "collision": p.collision.name, "steps": steps, "steady_change": change, "converged": change < tol,
        "tol": tol, "max_err_u_vertical": float(err_u.max()), "max_err_v_horizontal": float(err_v.max()),
        "max_err": err, "excluded": excluded, "mass_per_cell": mass / p.cell_count,
        "goal": "max |u - u_Ghia| / U over both centrelines <= 0.02 at 256 cells",
        "passed": bool(err <= 0.02 and change < tol) if N >= 256 else None,
    }
