"""3D lid-driven cubic cavity (lid on z+ moving along x), steady centreline profile and mass drift.

No literature comparison: this case checks that the 3D lattices reach a bounded steady state and
conserve mass with moving-wall bounce-back (Ladd 1994) on all six walls.
"""

from __future__ import annotations

import numpy as np

from ..problem import Problem, Wall
from ..solver import Solver
from .cavity import run_to_steady, velocity

LATTICES = ("D3Q19", "D3Q27")


def run(resolution=None, device=None, precision="float64", reynolds=100, lattice="D3Q19", lid_velocity=0.1,
        tol=1e-6, max_steps=None, collision="bgk", **_):
    if lattice not in LATTICES:
        raise ValueError(f"lattice={lattice!r} is not a 3D lattice; allowed: {', '.join(LATTICES)}")
    N = int(resolution or 32)
    if N < 4:
        raise ValueError(f"resolution={N} is too coarse; allowed: >= 4 cells")
    if not reynolds > 0:
        raise ValueError(f"reynolds={reynolds} must be positive")
    U = float(lid_velocity)
    if not (0.0 < U <= 0.15):
        raise ValueError(f"lid_velocity={U} is outside (0, 0.15]; 0.05 to 0.1 keeps Mach <= 0.17")
    nu = U * N / reynolds
    omega = 1.0 / (3.0 * nu + 0.5)
    if omega >= 1.95:
        raise ValueError(f"resolution={N} gives omega={omega:.3f} at reynolds={reynolds}; allowed omega < 1.95")
    max_steps = int(max_steps or max(5000, 3 * N * N / nu))
    # stationary walls first: edge and corner links take the smallest wall group, not the lid's
    walls = [Wall(face=f) for f in ("x-", "x+", "y-", "y+", "z-")] + [Wall(face="z+", velocity=(U, 0.0, 0.0))]
    p = Problem((N, N, N), lattice, collision, omega=omega, boundaries=walls, precision=precision, device=device)
    start = p.state()
    m0 = float(start.populations().sum())
    state, steps, change = run_to_steady(Solver(p), start, p.parameters(), U, tol, max(100, N), max_steps)
    f = state.populations()
    u = velocity(p, f) / U
    z = (np.arange(N) + 0.5) / N
    c = (np.arange(N) + 0.5) / N
    # x = y = 1/2 lies between cells when N is even: bilinear interpolation of the four columns
    ux = np.array([np.interp(0.5, c, [np.interp(0.5, c, u[i, :, k, 0]) for i in range(N)]) for k in range(N)])
    drift = abs(float(f.sum()) - m0) / m0
    return {
        "lattice": p.lattice.name, "reynolds": reynolds, "resolution": N, "lid_velocity": U, "omega": omega,
        "precision": precision, "steps": steps, "steady_change": change, "converged": change < tol,
        "z": z.tolist(), "u_centreline": ux.tolist(), "max_abs_u": float(np.abs(u).max()),
        "min_u_centreline": float(ux.min()), "mass_drift": drift,
        "goal": "no literature comparison: steady (change < tol), max |u|/U <= 1 and mass drift <= 1e-10 (float64)",
        "passed": bool(change < tol and np.abs(u).max() <= 1.0 + 1e-6 and drift <= (1e-10 if precision == "float64" else 1e-5)),
    }
