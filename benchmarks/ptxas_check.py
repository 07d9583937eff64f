"""Registers and spills of the step and fused-adjoint kernels, from Warp's PTX and a local ptxas.

No GPU needed: ``python benchmarks/ptxas_check.py [--lattice D3Q19] [--precision float32]``.
Needs CUDA's ptxas (PTXAS env var, default /usr/local/cuda-13.0/bin/ptxas).
"""
import argparse, glob, os, re, subprocess, tempfile
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm import kernels as K
from difflbm.bench import cavity_problem

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
for name, kern in kernels:
    with tempfile.TemporaryDirectory() as d:
        wp.compile_aot_module(kern.module, device=None, arch=90, module_dir=d, use_ptx=True)
        for path in glob.glob(os.path.join(d, "**", "*.ptx"), recursive=True):
            text = open(path, "rb").read().replace(b"\x00", b"").decode()
            text = re.sub(r"^\.version .*$", ".version 9.0", text, count=1, flags=re.M)
            fixed = path + ".fixed.ptx"
            open(fixed, "w").write(text)
            res = subprocess.run([ptxas, "-v", "-arch=sm_90", fixed, "-o", os.devnull], capture_output=True, text=True)
            lines = [ln for ln in res.stderr.splitlines() if "registers" in ln or "spill" in ln]
            print(name, "|", " ".join(ln.split("ptxas info    :")[-1].strip() for ln in lines[-2:]))
