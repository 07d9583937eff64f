"""One-call GPU measurement: copy bandwidth, forward MLUPS per lattice/size/precision, gradient
throughput and peak memory of checkpointed gradients. Writes JSON lines to $OUT/bench.jsonl.

Run on the device machine:  python benchmarks/gpu_bench.py [quick]
"""

import json
import os
import sys
import time

import warp as wp

wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout
from difflbm.bench import run_bench  # noqa: E402

out_dir = os.environ.get("OUT", ".")
log = open(os.path.join(out_dir, "bench.jsonl"), "a")
rows = []


def record(tag, **kw):
    t0 = time.time()
    try:
        r = run_bench(device="cuda:0", **kw)
    except Exception as err:  # keep going: one failed configuration should not lose the others
        r = {"error": repr(err)}
    r["tag"] = tag
    r["wall_s"] = round(time.time() - t0, 1)
    log.write(json.dumps(r, default=float) + "\n")
    log.flush()
    rows.append(r)
    print(json.dumps(r, default=float), flush=True)


plan = sys.argv[1] if len(sys.argv) > 1 else "forward"
if plan == "ensemble":
    # issue #7: B members of 128^2 in one launch vs one simulation with the same cell count
    record("d2q9-fp32-4096", lattice="D2Q9", precision="fp32", size=4096, steps=100)
    record("ensemble-1024x128^2", lattice="D2Q9", precision="fp32", size=128, steps=100, ensemble=1024)
if plan == "v2":
    # after the branch-free gather, static adjoint flags, graphs in the gradient (2026-11-23, second session)
    record("d3q19-fp32-256", lattice="D3Q19", precision="fp32", size=256, steps=100)
    record("d3q19-fp32-512", lattice="D3Q19", precision="fp32", size=512, steps=20, repeats=3)
    record("d3q19-fp16-256", lattice="D3Q19", precision="fp16", size=256, steps=100)
    record("d3q19-fp16-512", lattice="D3Q19", precision="fp16", size=512, steps=20, repeats=3)
    record("d3q27-fp32-256", lattice="D3Q27", precision="fp32", size=256, steps=100)
    record("d2q9-fp32-4096", lattice="D2Q9", precision="fp32", size=4096, steps=100)
    record("d3q19-fp64-256", lattice="D3Q19", precision="fp64", size=256, steps=50)
    record("grad-d3q19-fp32-256-T100", lattice="D3Q19", precision="fp32", size=256, steps=100, gradient=True,
           repeats=4)
    record("grad-d3q19-fp16-256-T100", lattice="D3Q19", precision="fp16", size=256, steps=100, gradient=True,
           repeats=4)
    record("ensemble-1024x128^2", lattice="D2Q9", precision="fp32", size=128, steps=100, ensemble=1024)
if plan == "v3":
    # fourth session: the preloaded fused adjoint (v8) and the gradient's overheads
    record("d3q19-fp32-256", lattice="D3Q19", precision="fp32", size=256, steps=100)
    record("grad-d3q19-fp32-256-T100", lattice="D3Q19", precision="fp32", size=256, steps=100, gradient=True,
           repeats=4)
    record("grad-d3q19-fp32-256-T1000", lattice="D3Q19", precision="fp32", size=256, steps=1000, gradient=True,
           repeats=2)
    record("grad-d3q19-fp16-256-T100", lattice="D3Q19", precision="fp16", size=256, steps=100, gradient=True,
           repeats=4)
    record("grad-d3q27-fp32-128-T100", lattice="D3Q27", precision="fp32", size=128, steps=100, gradient=True,
           repeats=3)
    record("grad-d3q19-fp64-128-T100", lattice="D3Q19", precision="fp64", size=128, steps=100, gradient=True,
           repeats=3)
if plan == "final":
    record("d3q19-fp32-256", lattice="D3Q19", precision="fp32", size=256, steps=100)
    record("d3q19-fp32-512", lattice="D3Q19", precision="fp32", size=512, steps=20, repeats=3)
    record("d3q19-fp32-64", lattice="D3Q19", precision="fp32", size=64, steps=400)
    record("d3q19-fp32-128", lattice="D3Q19", precision="fp32", size=128, steps=200)
    record("grad-d3q19-fp32-256-T100", lattice="D3Q19", precision="fp32", size=256, steps=100, gradient=True,
           repeats=2)
    record("d3q27-fp32-256", lattice="D3Q27", precision="fp32", size=256, steps=100)
    record("d2q9-fp32-4096", lattice="D2Q9", precision="fp32", size=4096, steps=100)
    record("d3q19-fp64-256", lattice="D3Q19", precision="fp64", size=256, steps=50)
if plan == "fused":
    record("d3q19-fp32-256", lattice="D3Q19", precision="fp32", size=256, steps=100)
    record("d3q19-fp32-512", lattice="D3Q19", precision="fp32", size=512, steps=20, repeats=3)
    record("grad-d3q19-fp32-128-T50", lattice="D3Q19", precision="fp32", size=128, steps=50, gradient=True, repeats=2)
    record("grad-d3q19-fp32-256-T20", lattice="D3Q19", precision="fp32", size=256, steps=20, gradient=True, repeats=2)
    record("grad-d3q19-fp32-256-T100", lattice="D3Q19", precision="fp32", size=256, steps=100, gradient=True,
           repeats=2)
if plan == "forward":
    record("d3q19-fp32-128", lattice="D3Q19", precision="fp32", size=128, steps=200)
    record("d3q19-fp32-256", lattice="D3Q19", precision="fp32", size=256, steps=100)
    record("d3q19-fp32-512", lattice="D3Q19", precision="fp32", size=512, steps=20, repeats=3)
    record("d3q19-fp32-64", lattice="D3Q19", precision="fp32", size=64, steps=400)
    record("d3q19-fp32-256-nograph", lattice="D3Q19", precision="fp32", size=256, steps=100, graph=False)
    record("d3q27-fp32-256", lattice="D3Q27", precision="fp32", size=256, steps=100)
    record("d2q9-fp32-4096", lattice="D2Q9", precision="fp32", size=4096, steps=100)
    record("d3q19-fp64-256", lattice="D3Q19", precision="fp64", size=256, steps=50)
if plan == "gradient":
    record("d3q19-fp32-256-fwdonly", lattice="D3Q19", precision="fp32", size=256, steps=100)
    # the mempool high-water mark cannot be reset: measure memory in increasing order first
    for T in (16, 64, 256):
        record(f"grad-mem-d3q19-fp32-64-T{T}", lattice="D3Q19", precision="fp32", size=64, steps=T, gradient=True,
               repeats=2)
    record("grad-d3q19-fp32-128-T50", lattice="D3Q19", precision="fp32", size=128, steps=50, gradient=True, repeats=2)
    record("grad-d3q19-fp32-256-T20", lattice="D3Q19", precision="fp32", size=256, steps=20, gradient=True, repeats=2)

print("\n%-28s %10s %10s %8s %10s" % ("tag", "MLUPS", "roof", "frac", "grad MLUPS"))
for r in rows:
    print("%-28s %10.0f %10.0f %8.3f %10s" % (r["tag"], r.get("forward_mlups", 0), r.get("roofline_mlups", 0),
                                              r.get("roofline_fraction", 0),
                                              "%.0f" % r["gradient_mlups_equivalent"] if "gradient_mlups_equivalent" in r else "-"))
