"""Registers and spills of a Warp kernel for sm_90 without a GPU: Warp's PTX through a local ptxas."""
import glob
import os
import re
import subprocess
import tempfile

import warp as wp

PTXAS = os.environ.get("PTXAS", "/usr/local/cuda-13.0/bin/ptxas")


def ptxas_info(kernel, ptxas: str = PTXAS) -> str:
    """ptxas -v's last two info lines (stack / spills, registers) for ``kernel``'s module."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        wp.compile_aot_module(kernel.module, device=None, arch=90, module_dir=d, use_ptx=True)
        for path in glob.glob(os.path.join(d, "**", "*.ptx"), recursive=True):
            text = open(path, "rb").read().replace(b"\x00", b"").decode()
            text = re.sub(r"^\.version .*$", ".version 9.0", text, count=1, flags=re.M)
            fixed = path + ".fixed.ptx"
            with open(fixed, "w") as fh:
                fh.write(text)
            res = subprocess.run([ptxas, "-v", "-arch=sm_90", fixed, "-o", os.devnull], capture_output=True, text=True)
            lines = [ln for ln in res.stderr.splitlines() if "registers" in ln or "spill" in ln]
            out.append(" ".join(ln.split("ptxas info    :")[-1].strip() for ln in lines[-2:]))
    return " / ".join(out)
