"""Registers of the forward-lab-7 kernels (native cell bodies), from Warp's PTX and a local ptxas (no GPU).

Usage: ``PTXAS=/usr/local/cuda/bin/ptxas python benchmarks/ptxas_lab7.py``.
"""
import os
import sys

import warp as wp

wp.config.quiet = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forward_lab7 as L  # noqa: E402
from _ptxas import ptxas_info  # noqa: E402

wp.init()
for stor in (wp.float32, wp.float16):
    for name, spec in L.variants_for("float16" if stor == wp.float16 else "float32").items():
        print(f"{name} {stor.__name__} |", ptxas_info(L.native_kernel(stor, *spec)))
