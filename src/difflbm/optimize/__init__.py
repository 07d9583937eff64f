"""Inverse-design problems behind ``difflbm optimize``.

Contract with the CLI: ``add_arguments(parser)`` adds this command's options, ``run_from_args(args)``
runs one problem and returns a JSON-serialisable summary dict.

Problems: ``initial-state`` (recover an initial vortex field from a later velocity snapshot),
``inflow-control`` (time-varying inlet profile from downstream velocities), ``topology``
(density-based design of a diffuser for low pressure drop) and ``viscosity`` (relaxation rate from
velocity snapshots). Each writes loss curve, field pictures, summary.json, the final flow as .vti and
the iterate after every iteration (``--resume`` continues from it) into ``--out``.
"""

from __future__ import annotations

from .common import Settings, check_positive, run_case

PROBLEMS = ("initial-state", "inflow-control", "topology", "viscosity")
PRECISIONS = ("float32", "float64")

__all__ = ["PROBLEMS", "add_arguments", "run_from_args", "run", "make_case"]


def _module(problem: str):
    if problem == "initial-state":
        from . import initial_state as m
    elif problem == "inflow-control":
        from . import inflow_control as m
    elif problem == "topology":
        from . import topology as m
    elif problem == "viscosity":
        from . import viscosity as m
    else:
        raise ValueError(f"problem={problem!r} is not known; allowed: {', '.join(PROBLEMS)}")
    return m


def add_arguments(parser):
    parser.add_argument("problem", choices=PROBLEMS)
    parser.add_argument("--resolution", type=int, default=None,
                        help="grid size (cells per side, or channel height); default per problem")
    parser.add_argument("--steps", type=int, default=None, help="time steps per rollout; default per problem")
    parser.add_argument("--iterations", type=int, default=None, help="optimizer iterations; default per problem")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="default float64 (robust line searches; float32 halves the memory on GPUs)")
    parser.add_argument("--out", default=None, help="output directory (default out/<problem>)")
    parser.add_argument("--resume", action="store_true", help="continue from the iterate saved in --out")


def run(problem: str, resolution=None, steps=None, iterations=None, device=None, precision=None, out=None,
        resume: bool = False) -> dict:
    """Run one problem; the Python twin of the command line. Returns the summary printed by the CLI."""
    from ..problem import resolve_device

    m = _module(problem)
    check_positive("--resolution", resolution, m.MIN_RESOLUTION)
    check_positive("--steps", steps, m.MIN_STEPS)
    check_positive("--iterations", iterations, 1)
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"--precision={precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    settings = Settings(problem=problem, resolution=int(resolution or m.DEFAULTS["resolution"]),
                        steps=int(steps or m.DEFAULTS["steps"]), iterations=int(iterations or m.DEFAULTS["iterations"]),
                        device=str(dev), precision=precision or "float64", out=str(out or f"out/{problem}"),
                        resume=bool(resume))
    case = m.make_case(settings)
    return run_case(case, settings)


def make_case(settings: Settings):
    return _module(settings.problem).make_case(settings)


def run_from_args(args) -> dict:
    return run(args.problem, resolution=args.resolution, steps=args.steps, iterations=args.iterations,
               device=args.device, precision=args.precision, out=args.out, resume=args.resume)
