"""Output and restart: VTK image data (pyevtk), PNG pictures (matplotlib), restart files (numpy .npz).

Every writer refuses to replace an existing file unless ``overwrite=True``, so results are never lost.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import kernels as K
from .problem import Problem, State

__all__ = ["FIELDS", "macroscopic", "write_vti", "write_png", "save_restart", "load_restart"]

FIELDS = ("density", "velocity")
PNG_FIELDS = ("speed", "density", "ux", "uy", "uz")
RESTART_VERSION = 1


def _target(path, suffix: str, overwrite: bool, what: str) -> Path:
    path = Path(path)
    if path.suffix != suffix:
        path = path.with_name(path.name + suffix)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what}: {str(path)!r} exists; pass overwrite=True to replace it")
    if not path.parent.exists():
        raise ValueError(f"path={str(path)!r}: directory {str(path.parent)!r} does not exist")
    return path


def _check_state(problem: Problem, state: State):
    if not isinstance(problem, Problem):
        raise TypeError(f"problem={problem!r} must be a Problem")
    if not isinstance(state, State):
        raise TypeError(f"state={state!r} must be a State")
    want = (problem.lattice.q, problem.cell_count)
    if tuple(state.f.shape) != want:
        raise ValueError(f"state has populations of shape {tuple(state.f.shape)}; problem needs {want}")


def macroscopic(problem: Problem, state: State):
    """Density (shape ``shape``) and velocity (shape (*shape, 3)) in lattice units, on the host.

    States hold post-collision populations, so with a body force F (the problem's construction
    value) the velocity is (sum_i c_i f_i - F/2) / rho, as the solver's own macroscopics.
    """
    f = state.populations().astype(np.float64)
    c = problem.lattice.velocities.astype(np.float64)
    rho = f.sum(0)
    m = np.zeros(problem.shape + (3,))
    for a in range(problem.lattice.dim):
        m[..., a] = np.tensordot(c[:, a], f, 1)
    if problem.force_mode != K.FORCE_NONE:
        # a uniform force (D,) and a field (*shape, D) both broadcast onto the momentum
        m[..., : problem.lattice.dim] -= 0.5 * problem._force
    return rho, m / rho[..., None]


def _grid3(a: np.ndarray, problem: Problem) -> np.ndarray:
    # pyevtk writes Fortran-ordered 3D arrays (x fastest, as VTK expects)
    return np.asfortranarray(a.reshape(problem.grid3).astype(np.float64))


def write_vti(path, problem: Problem, state: State, fields=FIELDS, spacing=1.0, overwrite: bool = False) -> str:
    """Write cell data ``fields`` (of density, velocity) as a VTK ImageData file; returns its path.

    ``.vti`` is added when missing. Cell i spans [i, i + 1) * spacing, the lattice's own geometry.
    """
    from pyevtk.hl import imageToVTK

    _check_state(problem, state)
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    bad = [f for f in fields if f not in FIELDS]
    if bad or not fields:
        raise ValueError(f"fields={fields!r} contains unknown names {bad}; allowed: {', '.join(FIELDS)}")
    if not (np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing={spacing} must be positive")
    target = _target(path, ".vti", overwrite, "write_vti")
    rho, u = macroscopic(problem, state)
    data = {}
    if "density" in fields:
        data["density"] = _grid3(rho, problem)
    if "velocity" in fields:
        data["velocity"] = tuple(_grid3(u[..., a], problem) for a in range(3))
    # pyevtk appends the extension itself
    written = imageToVTK(str(target.with_suffix("")), origin=(0.0, 0.0, 0.0), spacing=(float(spacing),) * 3,
                         cellData=data)
    return written


def write_png(path, problem: Problem, state: State, field: str = "speed", overwrite: bool = False,
              slice_index: int | None = None) -> str:
    """Write a picture of ``field`` (speed, density, ux, uy, uz); 3D grids show the z slice ``slice_index``."""
    _check_state(problem, state)
    if field not in PNG_FIELDS or (field == "uz" and problem.lattice.dim == 2):
        allowed = PNG_FIELDS if problem.lattice.dim == 3 else PNG_FIELDS[:-1]
        raise ValueError(f"field={field!r} is not available; allowed: {', '.join(allowed)}")
    target = _target(path, ".png", overwrite, "write_png")
    rho, u = macroscopic(problem, state)
    values = {"speed": lambda: np.linalg.norm(u, axis=-1), "density": lambda: rho,
              "ux": lambda: u[..., 0], "uy": lambda: u[..., 1], "uz": lambda: u[..., 2]}[field]()
    if problem.lattice.dim == 3:
        nz = problem.shape[2]
        k = nz // 2 if slice_index is None else int(slice_index)
        if not 0 <= k < nz:
            raise ValueError(f"slice_index={slice_index} is outside [0, {nz - 1}]")
        values = values[:, :, k]
    from matplotlib.figure import Figure  # no pyplot: no GUI backend or global figure state

    fig = Figure(figsize=(6, 6 * values.shape[1] / values.shape[0] + 0.6))
    ax = fig.add_subplot()
    im = ax.imshow(values.T, origin="lower", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=f"{field} (lattice units)")
    ax.set_xlabel("x (cells)")
    ax.set_ylabel("y (cells)")
    fig.savefig(target, dpi=100)
    return str(target)


def save_restart(path, problem: Problem, state: State, step: int, overwrite: bool = False) -> str:
    """Save populations, step and ``problem.describe()`` to an .npz file (added when missing)."""
    _check_state(problem, state)
    if int(step) != step or step < 0:
        raise ValueError(f"step={step!r} must be a non-negative integer")
    target = _target(path, ".npz", overwrite, "save_restart")
    payload = dict(f=state.f.numpy(), step=np.int64(step), version=np.int64(RESTART_VERSION),
                   describe=np.array(json.dumps(problem.describe(), sort_keys=True)))
    # write beside the target and rename, so a crash mid-write cannot leave a truncated restart
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **payload)
    if not overwrite and target.exists():
        tmp.unlink()
        raise FileExistsError(f"save_restart: {str(target)!r} appeared while writing; pass overwrite=True to replace it")
    os.replace(tmp, target)
    return str(target)


# the device does not change the populations: a restart written on a GPU loads on the CPU
_IGNORED = ("device",)


def load_restart(path, problem: Problem):
    """Read a restart written by :func:`save_restart` for ``problem``; returns ``(state, step)``.

    Raises ValueError when the stored description (grid, lattice, collision, precision, periodicity)
    differs from ``problem.describe()``, naming each differing entry.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path={str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as z:
        if "f" not in z or "describe" not in z or "step" not in z:
            raise ValueError(f"path={str(path)!r} is not a difflbm restart (needs f, step, describe)")
        stored = json.loads(str(z["describe"]))
        f = z["f"]
        step = int(z["step"])
    want = json.loads(json.dumps(problem.describe(), sort_keys=True))
    diff = [f"{k}: file {stored.get(k)!r}, problem {want.get(k)!r}" for k in sorted(set(stored) | set(want))
            if k not in _IGNORED and stored.get(k) != want.get(k)]
    if diff:
        raise ValueError(f"restart {str(path)!r} does not match the problem: " + "; ".join(diff))
    shape = (problem.lattice.q, problem.cell_count)
    if f.shape != shape:
        raise ValueError(f"restart {str(path)!r} holds populations of shape {f.shape}; the problem needs {shape}")
    state = State.empty(problem)
    # assign the stored bits directly: set_populations would cast and check, a restart must be exact
    if f.dtype != state.f.numpy().dtype:
        raise ValueError(f"restart {str(path)!r} holds {f.dtype} populations; the problem uses {problem.precision}")
    state.f.assign(np.ascontiguousarray(f))
    return state, step
