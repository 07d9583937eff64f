"""Registers of the forward-lab-6 kernels (ghost layouts), from Warp's PTX and a local ptxas (no GPU).

Usage: ``PTXAS=/usr/local/cuda/bin/ptxas python benchmarks/ptxas_lab6.py``.
"""
import glob, os, re, subprocess, tempfile, sys
import warp as wp
wp.config.quiet = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forward_lab6 as L
wp.init()
ptxas = os.environ.get("PTXAS", "/usr/local/cuda-13.0/bin/ptxas")
ks = []
for stor in (wp.float32, wp.float16):
    f3, m3 = L.ghost3_kernels(stor)
    ks += [(f"ghost3 fill {stor.__name__}", f3), (f"ghost3 main fused {stor.__name__}", m3),
           (f"ghost3 main plain {stor.__name__}", L.ghost3_kernels(stor, fused=False)[1]), (f"ghost4 {stor.__name__}", L.ghost3_kernels(stor, fused=2)[1]), (f"ghost5 {stor.__name__}", L.ghost3_kernels(stor, fused=3)[1]), (f"code only {stor.__name__}", L.ghost3_kernels(stor, fused=4)[1]), (f"ghost6 {stor.__name__}", L.ghost3_kernels(stor, fused=5)[1]), (f"ghost7 {stor.__name__}", L.ghost3_kernels(stor, fused=6)[1]), (f"ghost8 {stor.__name__}", L.ghost3_kernels(stor, fused=7)[1]),
           (f"ghost2 fill {stor.__name__}", L.ghost2_kernels(stor)[0])]
for name, kern in ks:
    with tempfile.TemporaryDirectory() as d:
        wp.compile_aot_module(kern.module, device=None, arch=90, module_dir=d, use_ptx=True)
        for path in glob.glob(os.path.join(d, "**", "*.ptx"), recursive=True):
            text = open(path, "rb").read().replace(b"\x00", b"").decode()
            text = re.sub(r"^\.version .*$", ".version 9.0", text, count=1, flags=re.M)
            fixed = path + ".fixed.ptx"; open(fixed, "w").write(text)
            res = subprocess.run([ptxas, "-v", "-arch=sm_90", fixed, "-o", os.devnull], capture_output=True, text=True)
            lines = [ln for ln in res.stderr.splitlines() if "registers" in ln or "spill" in ln]
            print(name, "|", " ".join(ln.split("ptxas info    :")[-1].strip() for ln in lines[-2:]))
