"""Registers of the forward-lab-6 kernels (ghost layouts), from Warp's PTX and a local ptxas (no GPU).

Usage: ``PTXAS=/usr/local/cuda/bin/ptxas python benchmarks/ptxas_lab6.py``.
"""
import os
import sys

import warp as wp

wp.config.quiet = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forward_lab6 as L  # noqa: E402
from _ptxas import ptxas_info  # noqa: E402

wp.init()
# ghost3_kernels' ``fused`` forms: 1 ghost3, 2 ghost4 (pairs), 3 ghost5 (read back), 4 the code read
# only (no ghost writes), 5 ghost6 (rolled loop), 6 ghost7 (offset table), 7 ghost8 (whole sectors)
FORMS = [("ghost3 main plain", False), ("ghost3", 1), ("ghost4", 2), ("ghost5", 3), ("code only", 4),
         ("ghost6", 5), ("ghost7", 6), ("ghost8", 7)]
for stor in (wp.float32, wp.float16):
    kernels = [("ghost3 fill", L.ghost3_kernels(stor)[0]), ("ghost2 fill", L.ghost2_kernels(stor)[0])]
    kernels += [(name, L.ghost3_kernels(stor, fused=form)[1]) for name, form in FORMS]
    for name, kern in kernels:
        print(f"{name} {stor.__name__} |", ptxas_info(kern))
