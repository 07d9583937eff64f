"""Host cost of Solver.run's step loop on a GPU (no CUDA graph): MLUPS of the D3Q19 float32 lid
cavity for a few sizes, median of repeats, device synchronized around each run.

    python3 benchmarks/run_loop.py [SIZE ...]      (default 32 64 128)

Prints one JSON line per size. Compare trees by putting another tree's ``src`` first on PYTHONPATH.
"""

import json
import statistics
import sys
import time

import warp as wp

wp.config.log_level = wp.LOG_WARNING

import difflbm  # noqa: E402
from difflbm.bench import cavity_problem  # noqa: E402


def main(sizes):
    dev = "cuda:0" if wp.is_cuda_available() else "cpu"
    for n in sizes:
        p = cavity_problem("D3Q19", n, "float32", dev)
        solver = difflbm.Solver(p)
        state = p.state()
        steps = 200 if dev != "cpu" else 10
        solver.run(state, 4)  # warm-up: kernel load
        times = []
        for _ in range(5):
            wp.synchronize_device(dev)
            t0 = time.perf_counter()
            solver.run(state, steps)
            wp.synchronize_device(dev)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(json.dumps({"size": n, "steps": steps, "device": str(dev), "module": difflbm.__file__,
                          "run_s_median": med, "us_per_step": med / steps * 1e6,
                          "mlups": p.cell_count * steps / med / 1e6}), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [32, 64, 128])
