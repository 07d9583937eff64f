"""Shared machinery of the optimize problems: settings, the L-BFGS-B driver with resume, outputs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


ITERATE_FILE = "iterate.npz"
# parameters up to this many numbers go inline into summary.json; larger ones become .npy files
INLINE_LIMIT = 64


@dataclass
class Settings:
    problem: str
    resolution: int
    steps: int
    iterations: int
    device: str
    precision: str
    out: str
    resume: bool = False


def check_positive(name: str, value, minimum: int = 1):
    if value is None:
        return
    if int(value) != value or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= {minimum}")


def velocity(problem, state) -> np.ndarray:
    """Velocity (*shape, D) of a state on the host, float64."""
    f = state.populations().astype(np.float64)
    c = problem.lattice.velocities.astype(np.float64)
    rho = f.sum(0)
    return np.stack([np.tensordot(c[:, a], f, 1) / rho for a in range(problem.lattice.dim)], axis=-1)


def density(state) -> np.ndarray:
    return state.populations().astype(np.float64).sum(0)


class Case:
    """One inverse problem. Subclasses set ``x0``, ``bounds``, ``stages`` and implement the hooks."""

    name = ""
    stages: list = [None]  # continuation parameter per stage (None: one plain stage)

    def value_and_grad(self, x: np.ndarray, stage) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def metrics(self, x: np.ndarray) -> dict:
        return {}

    def parameters(self, x: np.ndarray) -> dict:
        """Named final parameters (arrays or floats) for summary.json."""
        return {"x": x}

    def write_outputs(self, x: np.ndarray, x_start: np.ndarray, out: Path) -> list[str]:
        return []

    def stage_of(self, done: int, total: int) -> int:
        """Continuation stage for iteration ``done`` of ``total`` (equal shares)."""
        n = len(self.stages)
        return min(done * n // max(total, 1), n - 1)


def _save_iterate(out: Path, x, history, done, settings: Settings, extra: dict):
    tmp = out / f".{ITERATE_FILE}.tmp.npz"
    np.savez(tmp, x=x, history=np.asarray(history, dtype=np.float64), done=np.int64(done),
             settings=np.array(json.dumps(_resume_key(settings))), **extra)
    tmp.replace(out / ITERATE_FILE)  # atomic: an interrupted save leaves the previous iterate intact


def _resume_key(s: Settings) -> dict:
    # what must agree for an iterate to be continued (iterations may grow, the device may change)
    return dict(problem=s.problem, resolution=s.resolution, steps=s.steps, precision=s.precision)


def _load_iterate(out: Path, settings: Settings, size: int):
    path = out / ITERATE_FILE
    if not path.exists():
        raise ValueError(f"--resume was given but {str(path)!r} does not exist; run without --resume first")
    with np.load(path, allow_pickle=False) as z:
        stored = json.loads(str(z["settings"]))
        want = _resume_key(settings)
        for key in want:
            if stored.get(key) != want[key]:
                raise ValueError(f"--{key}={want[key]!r} differs from the saved iterate's {stored.get(key)!r} in "
                                 f"{str(path)!r}; use the same value to --resume")
        x = z["x"].astype(np.float64)
        if x.size != size:
            raise ValueError(f"{str(path)!r} holds {x.size} parameters; this problem has {size}")
        extra = {k: z[k] for k in z.files if k not in ("x", "history", "done", "settings")}
        return x, list(z["history"]), int(z["done"]), extra


def run_case(case: Case, settings: Settings) -> dict:
    """Optimise ``case`` by L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995), saving the iterate every iteration."""
    from scipy.optimize import minimize
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    x_start = case.x0.astype(np.float64).copy()
    total = settings.iterations
    if settings.resume:
        x, history, done, extra = _load_iterate(out, settings, x_start.size)
        case.restore(extra) if hasattr(case, "restore") else None
    else:
        x, history, done = x_start.copy(), [], 0
    bar = tqdm(total=total, initial=done, desc=settings.problem, unit="it", dynamic_ncols=True)
    evaluations = 0
    last = {}

    def fun(z, stage):
        nonlocal evaluations
        evaluations += 1
        value, grad = case.value_and_grad(z, stage)
        last["x"], last["f"] = z.copy(), value
        return value, np.asarray(grad, dtype=np.float64)

    if not history:
        stage = case.stages[case.stage_of(0, total)]
        history.append(fun(x, stage)[0])
        bar.set_postfix(loss=f"{history[-1]:.3e}")
    converged_stage = -1
    while done < total:
        k = case.stage_of(done, total)
        stage = case.stages[k]
        # iterations left in this stage (continuation stages split the budget evenly)
        end = next((j for j in range(done + 1, total + 1) if case.stage_of(j, total) != k), total)
        if k == converged_stage:
            done = end
            continue
        budget = end - done

        def callback(intermediate_result):
            nonlocal done
            xk = np.asarray(intermediate_result.x, dtype=np.float64)
            value = last["f"] if ("x" in last and np.array_equal(last["x"], xk)) else float(intermediate_result.fun)
            history.append(float(value))
            done += 1
            _save_iterate(out, xk, history, done, settings, case.extra() if hasattr(case, "extra") else {})
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3e}")

        start_done = done
        res = minimize(fun, x, args=(stage,), jac=True, method="L-BFGS-B", bounds=case.bounds, callback=callback,
                       options=dict(maxiter=budget, maxfun=4 * budget + 10, ftol=1e-15, gtol=1e-12, maxcor=20))
        x = np.asarray(res.x, dtype=np.float64)
        if done - start_done < budget:
            # converged (or line search failed) before the stage's budget: skip to the next stage
            converged_stage = k
            if len(case.stages) == 1:
                break
    bar.close()
    _save_iterate(out, x, history, done, settings, case.extra() if hasattr(case, "extra") else {})
    metrics = case.metrics(x)
    files = case.write_outputs(x, x_start, out)
    files.append(_loss_png(out / "loss.png", history, settings.problem))
    params = {}
    for name, value in case.parameters(x).items():
        arr = np.asarray(value, dtype=np.float64)
        if arr.size <= INLINE_LIMIT:
            params[name] = arr.tolist()
        else:
            fname = f"param_{name}.npy"
            np.save(out / fname, arr)
            params[name] = fname
            files.append(str(out / fname))
    wall = time.perf_counter() - t0
    memory = _peak_device_memory(settings.device)
    summary = dict(problem=settings.problem, settings=asdict(settings), device=settings.device,
                   peak_device_memory_bytes=memory,
                   iterations_done=done, function_evaluations_this_run=evaluations,
                   initial_loss=history[0], final_loss=history[-1],
                   loss_reduction=(history[0] / history[-1]) if history[-1] > 0 else float("inf"),
                   metrics=metrics, parameters=params, wall_time_s=round(wall, 3), loss_history=history,
                   files=sorted(str(Path(f).name) for f in files))
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1, default=float)
    result = dict(problem=settings.problem, iterations=done, initial_loss=history[0], final_loss=history[-1],
                  loss_reduction=summary["loss_reduction"], **metrics, wall_time_s=round(wall, 3),
                  device=settings.device, peak_device_memory_bytes=memory, out=str(out))
    return result


def _peak_device_memory(device: str):
    """High-water mark of Warp's CUDA memory pool in this process (None on the CPU, or without a pool)."""
    import warp as wp

    dev = wp.get_device(device)
    if dev.is_cuda and wp.is_mempool_enabled(dev):
        return int(wp.get_mempool_used_mem_high(dev))
    return None


def _loss_png(path: Path, history, title: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4))
    ax = fig.add_subplot()
    ax.semilogy(np.arange(len(history)), history, "o-", ms=2.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return str(path)


def panels_png(path: Path, panels, title: str = "", cmap="viridis", symmetric=False, share=True, limits=None) -> str:
    """A row of images ``panels = [(label, array (nx, ny)), ...]`` (x along the horizontal)."""
    from matplotlib.figure import Figure

    nx, ny = panels[0][1].shape
    n = len(panels)
    width = 3.2 * n
    fig = Figure(figsize=(width, 3.2 * ny / nx * 0.95 + 0.9))
    vals = np.concatenate([np.ravel(a) for _, a in panels])
    vmax = np.max(np.abs(vals)) if symmetric else vals.max()
    vmin = -vmax if symmetric else vals.min()
    for k, (label, arr) in enumerate(panels):
        ax = fig.add_subplot(1, n, k + 1)
        kw = dict(vmin=vmin, vmax=vmax) if share else {}
        if limits is not None and limits[k] is not None:
            kw = dict(vmin=limits[k][0], vmax=limits[k][1])
        im = ax.imshow(np.asarray(arr).T, origin="lower", cmap=cmap, interpolation="nearest", **kw)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if not share or k == n - 1:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return str(path)


def vorticity(u: np.ndarray) -> np.ndarray:
    """Central-difference vorticity of a periodic 2D field (plots only)."""
    dvdx = (np.roll(u[..., 1], -1, 0) - np.roll(u[..., 1], 1, 0)) / 2
    dudy = (np.roll(u[..., 0], -1, 1) - np.roll(u[..., 0], 1, 1)) / 2
    return dvdx - dudy
