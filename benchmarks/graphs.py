"""Launch overhead on small grids: forward and checkpointed gradient with and without CUDA graphs
(D3Q19 fp32 cavity), one JSON line per run:  python3 benchmarks/graphs.py [sizes...]"""
import json, sys
import warp as wp
wp.config.log_level = wp.LOG_WARNING
from difflbm.bench import run_bench

for size in [int(s) for s in sys.argv[1:]] or [64, 128]:
    for graph in (False, True):
        r = run_bench(lattice="D3Q19", precision="fp32", size=size, steps=100, device="cuda:0", gradient=True,
                      graph=graph)
        print(json.dumps({"size": size, "cuda_graph": graph, "forward_mlups": round(r["forward_mlups"]),
                          "forward_ms_per_step": round(1e3 * r["forward_s_median"] / r["steps"], 4),
                          "gradient_mlups_equiv": round(r["gradient_mlups_equivalent"]),
                          "gradient_ms_per_step": round(1e3 * r["gradient_s_median"] / r["steps"], 4),
                          "gradient_over_forward": round(r["gradient_over_forward"], 2)}), flush=True)
