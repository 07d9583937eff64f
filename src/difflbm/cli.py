"""Command line: ``difflbm validate | gradcheck | bench``."""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main"]


def _print(result: dict, as_json: bool):
    if as_json:
        print(json.dumps(result, default=float))
        return
    for key, value in result.items():
        print(f"{key:>28}: {value}")


def _cmd_validate(args) -> int:
    from .validation import run_case
    t0 = time.perf_counter()
    options = {"resolution": args.resolution, "device": args.device}
    if args.precision:
        options["precision"] = args.precision
    for name in ("reynolds", "benchmark", "lattice", "u_max", "collision", "trt_magic"):
        value = getattr(args, name)
        if value is not None:
            if name == "reynolds" and args.case != "cavity":
                raise ValueError(f"--reynolds={value} applies to the cavity case only")
            if name == "benchmark" and args.case != "cylinder":
                raise ValueError(f"--benchmark={value} applies to the cylinder case only")
            if name == "lattice" and args.case != "cavity-3d":
                raise ValueError(f"--lattice={value} applies to the cavity-3d case only")
            if name in ("u_max", "collision", "trt_magic") and args.case != "cylinder":
                raise ValueError(f"--{name.replace('_', '-')}={value} applies to the cylinder case only")
            options["case" if name == "benchmark" else name] = value
    result = run_case(args.case, **options)
    result["wall_time_s"] = round(time.perf_counter() - t0, 3)
    _print(result, args.json)
    return 0


def _cmd_gradcheck(args) -> int:
    import numpy as np

    from . import losses as L
    from .gradcheck import gradcheck
    from .problem import Outflow, PressureOutlet, Problem, VelocityInlet, Wall, circle_link_fractions

    lattice = args.lattice.upper()
    D = 2 if lattice == "D2Q9" else 3
    shape = (12, 10) if D == 2 else (6, 5, 4)
    rng = np.random.default_rng(args.seed)
    u = (0.03,) + (0.0,) * (D - 1)
    boundaries, kw = [], {}
    b = args.boundary
    if b == "periodic":
        pass
    elif b == "wall":
        boundaries = [Wall(face="y-"), Wall(face="y+", velocity=(0.02,) + (0.0,) * (D - 1))]
    elif b == "curved":
        m, q = circle_link_fractions(lattice, shape, tuple(s / 2 + 0.3 for s in shape), 2.2)
        boundaries = [Wall(mask=m, link_fraction=q)]
    elif b == "inlet-outlet":
        boundaries = [Wall(face="y-"), Wall(face="y+"), VelocityInlet(face="x-", velocity=u),
                      PressureOutlet(face="x+", density=1.0)]
    elif b == "outflow":
        boundaries = [Wall(face="y-"), Wall(face="y+"), VelocityInlet(face="x-", velocity=u), Outflow(face="x+")]
    elif b == "porous":
        kw["solid_fraction"] = rng.uniform(0.1, 0.9, shape)
    param = args.parameter
    if param == "force":
        kw["force"] = 1e-4 * rng.standard_normal(shape + (D,))
    if param == "solid_fraction" and "solid_fraction" not in kw:
        kw["solid_fraction"] = rng.uniform(0.1, 0.9, shape)
    p = Problem(shape, lattice, args.collision, omega=1.3, boundaries=boundaries, precision=args.precision,
                device=args.device, **kw)
    st = p.state(1 + 0.01 * rng.standard_normal(shape), 0.02 * rng.standard_normal(shape + (D,)))
    loss = L.KineticEnergy(when=args.loss)
    r = gradcheck(p, p.parameters(), st, args.steps, loss, wrt=(param,), directions=args.directions, seed=args.seed)
    from . import adjoint as A
    from . import kernels as K
    terms = [t.bind(p) for t in loss.terms()]
    moments = A._moments_replay(p, "auto", K.fused_adjoint_supported(p.config), param == "omega", terms, args.steps)
    out = {"relative_error": r[param], "lattice": lattice, "collision": args.collision, "boundary": b,
           "parameter": param, "steps": args.steps, "loss": f"KineticEnergy(when={args.loss!r})",
           "replay": "moments" if moments else "states", "precision": p.precision, "device": str(p.device),
           "shape": list(shape), "pairs_adjoint_fd": r["pairs"][param]}
    _print(out, args.json)
    return 0


def _cmd_bench(args) -> int:
    from .bench import run_bench
    result = run_bench(lattice=args.lattice, precision=args.precision, size=args.size, steps=args.steps,
                       gradient=args.gradient, device=args.device, repeats=args.repeats, ensemble=args.ensemble,
                       graph=not args.no_graph)
    _print(result, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .validation import CASES
    parser = argparse.ArgumentParser(prog="difflbm", description="Differentiable lattice Boltzmann on Warp")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="run a validation case and print its metrics")
    v.add_argument("case", choices=sorted(CASES))
    v.add_argument("--resolution", type=int, default=None)
    v.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    v.add_argument("--precision", default=None, choices=["fp16", "fp32", "fp64", "float16", "float32", "float64"])
    v.add_argument("--reynolds", type=int, default=None, choices=[100, 400, 1000], help="cavity only")
    v.add_argument("--benchmark", default=None, choices=["2D-1", "2D-2"], help="cylinder only (Schafer-Turek case)")
    v.add_argument("--lattice", default=None, choices=["D3Q19", "D3Q27"], help="cavity-3d only")
    v.add_argument("--u-max", dest="u_max", type=float, default=None,
                   help="cylinder only: peak inlet velocity in lattice units (Mach number; drag error ~ u_max^2)")
    v.add_argument("--collision", default=None, choices=["bgk", "trt", "smagorinsky"],
                   help="cylinder only (default: trt for 2D-1, smagorinsky for 2D-2)")
    v.add_argument("--trt-magic", dest="trt_magic", type=float, default=None,
                   help="cylinder with --collision trt only: the magic parameter Lambda (default 1/4)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_validate)

    g = sub.add_parser("gradcheck", help="adjoint gradient vs central finite differences")
    g.add_argument("--lattice", default="D2Q9", choices=["D2Q9", "D3Q19", "D3Q27"])
    g.add_argument("--collision", default="bgk", choices=["bgk", "trt", "smagorinsky"])
    g.add_argument("--boundary", default="inlet-outlet",
                   choices=["periodic", "wall", "curved", "inlet-outlet", "outflow", "porous"])
    g.add_argument("--parameter", default="initial",
                   choices=["initial", "omega", "force", "wall_velocity", "inlet_velocity", "outlet_density",
                            "solid_fraction"])
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--loss", default="every", choices=["every", "final"],
                   help="kinetic energy summed over every step, or of the final state only (which the moments "
                        "replay differentiates where it applies)")
    g.add_argument("--precision", default="fp64", choices=["fp32", "fp64"])
    g.add_argument("--directions", type=int, default=2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None)
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=_cmd_gradcheck)

    b = sub.add_parser("bench", help="forward and gradient throughput on the 3D lid-driven cavity")
    b.add_argument("--lattice", default="D3Q19", choices=["D2Q9", "D3Q19", "D3Q27"])
    b.add_argument("--precision", default="fp32", choices=["fp16", "fp32", "fp64"])
    b.add_argument("--size", type=int, default=None, help="cells per side (default 256 on CUDA, 32 on CPU)")
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--gradient", action="store_true")
    b.add_argument("--no-graph", action="store_true", help="launch every step (no CUDA graphs), to see launch overhead")
    b.add_argument("--ensemble", type=int, default=0, help="B stacked 2D cavities of --size^2 (D2Q9 only)")
    b.add_argument("--device", default=None)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_cmd_bench)
    o = sub.add_parser("optimize", help="gradient-based inverse design problems")
    from .optimize import add_arguments  # the optimize package owns its options
    add_arguments(o)
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=_cmd_optimize)
    return parser


def _cmd_optimize(args) -> int:
    from .optimize import run_from_args
    result = run_from_args(args)
    _print(result, args.json)
    return 0


def main(argv=None) -> int:
    import warp as wp
    wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FloatingPointError) as err:
        print(f"difflbm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
