"""Registers and spills of the step and fused-adjoint kernels (and the native steps where they apply),
from Warp's PTX and a local ptxas.

No GPU needed: ``python benchmarks/ptxas_check.py [--lattice D3Q19] [--precision float32]``.
Needs CUDA's ptxas (PTXAS env var, default /usr/local/cuda-13.0/bin/ptxas).
"""
import argparse, os, sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import kernels as K
from difflbm.bench import cavity_problem
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ptxas import ptxas_info  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--lattice", default="D3Q19")
ap.add_argument("--precision", default="float32")
ap.add_argument("--max-registers", type=int, default=None)
args = ap.parse_args()
ptxas = os.environ.get("PTXAS", "/usr/local/cuda-13.0/bin/ptxas")
wp.init()
cfg = cavity_problem(args.lattice, 8, args.precision, "cpu").config
if args.max_registers:
    import dataclasses
    cfg = dataclasses.replace(cfg, max_registers=args.max_registers)
kernels = [("forward", K.step_kernel(cfg, backward=False)),
           ("fused adjoint (omega, force gradients)", K.step_adjoint_kernel(cfg)),
           ("fused adjoint (no omega gradient)", K.step_adjoint_kernel(cfg, omega_grad=False, force_grad=False)),
           ("forward storing moments", K.step_kernel(cfg, backward=False, moments=True)),
           ("moments adjoint", K.step_adjoint_kernel(cfg, omega_grad=False, force_grad=False, moments=True)),
           ("moments adjoint, gathered -> gathered", K.step_adjoint_kernel(cfg, omega_grad=False, force_grad=False,
                                                                          moments=True, pull_in=True, push_out=False)),
           ("moments adjoint, plain -> gathered", K.step_adjoint_kernel(cfg, omega_grad=False, force_grad=False,
                                                                       moments=True, pull_in=False, push_out=False))]
from difflbm import native as N  # noqa: E402
if N.native_step_unsupported(cfg, 8 ** 3) is None:
    kernels += [("native forward", N.native_step_kernel(cfg)),
                ("native forward storing moments", N.native_step_kernel(cfg, moments=True)),
                ("native forward, link-free loads", N.native_step_kernel(cfg, form="split")),
                ("native forward, two cells per thread", N.native_step_kernel(cfg, form="pairs")),
                ("native forward, two cells, link-free loads", N.native_step_kernel(cfg, form="pairs_split")),
                ("native forward, two cells, joint loads", N.native_step_kernel(cfg, form="pairs_joint")),
                ("native forward, two cells, joint loads, constants",
                 N.native_step_kernel(cfg, form="pairs_joint", constants=N.grid_constants(cavity_problem(
                     args.lattice, 256, args.precision, "cpu")))),
                ("native ranged forward", N.native_step_kernel(cfg, ranged=True))]
for name, kern in kernels:
    print(name, "|", ptxas_info(kern, ptxas))
