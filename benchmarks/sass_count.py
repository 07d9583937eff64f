"""SASS instruction counts (sm_90) of the native forward step, without a GPU: Warp's PTX through a
local ptxas, then nvdisasm (thirteenth session, issue #6: float16 is instruction-bound, so the static
count of the per-cell body is a first check of a variant before the H200 times it).

Usage: ``python benchmarks/sass_count.py CASE FORM [FORM ...]`` with CASE like ``D3Q19:float16`` or
``D3Q19:float16:periodic`` (the bench's 256^3 lid cavity or a periodic box, constants compiled in).
Needs PTXAS (default /usr/local/cuda-13.0/bin/ptxas) and NVDISASM (default nvdisasm on PATH).
Prints, per form: registers, instructions in the kernel, and the counts of the commonest opcodes.
"""
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile

import warp as wp

wp.config.quiet = True
from difflbm import kernels as K, native as N  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402
import difflbm as lbm  # noqa: E402

PTXAS = os.environ.get("PTXAS", "/usr/local/cuda-13.0/bin/ptxas")
NVDISASM = os.environ.get("NVDISASM", "nvdisasm")


def sass(kernel) -> str:
    with tempfile.TemporaryDirectory() as d:
        wp.compile_aot_module(kernel.module, device=None, arch=90, module_dir=d, use_ptx=True)
        (path,) = glob.glob(os.path.join(d, "**", "*.ptx"), recursive=True)
        text = open(path, "rb").read().replace(b"\x00", b"").decode()
        text = re.sub(r"^\.version .*$", ".version 9.0", text, count=1, flags=re.M)
        ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        open(ptx, "w").write(text)
        res = subprocess.run([PTXAS, "-v", "-arch=sm_90", ptx, "-o", cubin], capture_output=True, text=True, check=True)
        regs = [ln.split(":")[-1].strip() for ln in res.stderr.splitlines() if "registers" in ln][-1]
        out = subprocess.run([NVDISASM, "-c", cubin], capture_output=True, text=True, check=True).stdout
    return regs, out


def main():
    case, forms = sys.argv[1], sys.argv[2:]
    lattice, precision, *shape = case.split(":")
    wp.init()
    if shape and shape[0] == "periodic":
        p = lbm.Problem((256,) * 3, lattice, "bgk", omega=1.0, precision=precision, device="cpu")
    else:
        p = cavity_problem(lattice, 256, precision, "cpu")
    for form in forms:
        faces = os.environ.get("DIFFLBM_NATIVE_FACE_CODES", "1") == "1"
        kern = N.native_step_kernel(p.config, form=form, constants=N.grid_constants(p, face_codes=faces))
        regs, text = sass(kern)
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", text)
        kinds = collections.Counter(o.split(".")[0] for o in ops)
        collision = "deviation" if K.deviation_collision(p.config) else "shifted"
        print(f"{case} {form} {collision} faces={int(faces)}: {regs}; {len(ops)} instructions;",
              ", ".join(f"{k} {v}" for k, v in kinds.most_common(14)))


if __name__ == "__main__":
    main()
