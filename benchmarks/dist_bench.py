"""Scaling of the x-slab decomposition over GPUs: D3Q19 float32 lid-driven cavity, forward and gradient.

The problem is difflbm.bench's benchmark cavity (lid on z+ moving at 0.05 in x, bounce-back on the
other faces, omega = 1.0, BGK). Weak scaling: every rank owns size^3 cells, the global grid is
(G * size, size, size); strong scaling: the global size^3 grid is split over the G ranks.

    torchrun --standalone --nproc_per_node=G benchmarks/dist_bench.py --mode weak --size 256 [--gradient]

Timings: warm-up excluded; every rank synchronizes its device and the group meets at a barrier
before each repeat; a repeat's time is the slowest rank's; the median of the repeats is reported.
The forward loop is SlabDecomposition.advance (halo exchange + fused step, nothing leaves the
device); the gradient is one distributed_value_and_grad call (checkpointed, kinetic energy of the
final state, d/d wall velocity, gather=False) on a decomposition built before the clock starts.
MLUPS count every global cell once per step. Rank 0 prints one JSON line (and appends it to
--out). Efficiency needs the one-rank line of the same mode, size and steps (run with
--nproc_per_node=1): weak t_1 / t_G, strong t_1 / (G t_G); --baseline FILE computes it.

NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1), set here before torch.distributed starts unless the caller set them.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist
import warp as wp

from difflbm.adjoint import Checkpointed, value_and_grad
from difflbm.distributed import (
    SlabDecomposition,
    distributed_run,
    distributed_value_and_grad,
)
from difflbm.losses import KineticEnergy
from difflbm.problem import Problem, State, Wall
from difflbm.solver import Solver

# NCCL, torch's symmetric memory and NVSHMEM read these when they start (in init_process_group or
# at the first collective), not when torch is imported: setting them here is early enough
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
for _name, _value in NVLS_OFF.items():
    os.environ.setdefault(_name, _value)

wp.config.log_level = wp.LOG_WARNING  # Warp 1.19 logs module loads at INFO, on stdout


def cavity(shape, device) -> Problem:
    """difflbm.bench.cavity_problem's D3Q19 cavity on a box of any ``shape`` (that one is a cube)."""
    return Problem(shape, "D3Q19", "bgk", omega=1.0, precision="float32", device=device,
                   boundaries=[Wall(face="z+", velocity=(0.05, 0.0, 0.0))] +
                   [Wall(face=f) for f in ("x-", "x+", "y-", "y+", "z-")])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("weak", "strong"), required=True)
    ap.add_argument("--size", type=int, required=True, help="weak: cells per rank = size^3; strong: global size^3")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed run (default 100 on GPUs, 10 on CPUs)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gradient", action="store_true", help="also time distributed_value_and_grad")
    ap.add_argument("--segment", type=int, default=None,
                    help="checkpoint segment of the gradient (default ceil(sqrt(steps)))")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--backend", choices=("nccl", "gloo"), default=None, help="default: nccl on cuda, gloo on cpu")
    ap.add_argument("--out", default=None, help="append rank 0's JSON line to this file")
    ap.add_argument("--check", type=int, default=0, metavar="STEPS",
                    help="also compare STEPS steps (populations, loss, wall-velocity gradient) with one device's "
                         "Solver.run and value_and_grad on rank 0 (needs the global problem's memory there)")
    ap.add_argument("--no-overlap", action="store_true",
                    help="exchange the halos, then step (and adjoin, then reverse-exchange): "
                         "difflbm.distributed._OVERLAP = False")
    ap.add_argument("--overlap-one-rank", action="store_true",
                    help="with one rank, run the overlapped schedule anyway (its own planes as the messages: "
                         "the split launches of a multi-rank step, timed on one GPU); "
                         "difflbm.distributed._OVERLAP = 'always'")
    ap.add_argument("--baseline", default=None,
                    help="JSON lines holding the one-rank run of the same mode, size and steps: adds efficiencies")
    return ap.parse_args(argv)


class Group:
    """This process's place in the torch.distributed group, its device and the timing helpers."""

    def __init__(self, device: str, backend: str | None):
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                            ("MASTER_PORT", "29500")):
            os.environ.setdefault(name, value)  # plain `python dist_bench.py` runs as one rank
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.cuda = device == "cuda"
        self.backend = backend or ("nccl" if self.cuda else "gloo")
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = f"cuda:{self.local_rank}"
            dist.init_process_group(self.backend, device_id=torch.device(self.device))
        else:
            self.device = "cpu"
            dist.init_process_group(self.backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.comm = self.device if self.backend == "nccl" else "cpu"

    def sync(self):
        wp.synchronize_device(self.device)
        if self.cuda:
            torch.cuda.synchronize()

    def barrier(self):
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def slowest(self, seconds: float) -> float:
        t = torch.tensor([seconds], dtype=torch.float64, device=self.comm)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def time(self, fn, repeats: int) -> list[float]:
        """Each repeat's slowest-rank time of ``fn()``, devices synchronized on both sides."""
        times = []
        for _ in range(repeats):
            self.sync()
            self.barrier()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(self.slowest(time.perf_counter() - t0))
        return times


def efficiency(row: dict, baseline_path: str) -> dict:
    """Weak t_1 / t_G, strong t_1 / (G t_G), against the one-rank row of the same mode, size and steps."""
    with open(baseline_path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    base = [r for r in rows if r.get("world_size") == 1 and r.get("mode") == row["mode"]
            and r.get("size") == row["size"] and r.get("steps") == row["steps"]]
    if not base:
        raise ValueError(f"--baseline {baseline_path!r} holds no world_size=1 row with mode={row['mode']}, "
                         f"size={row['size']}, steps={row['steps']}; run it with --nproc_per_node=1 first")
    base, G = base[-1], row["world_size"]
    scale = 1 if row["mode"] == "weak" else G
    out = {"forward_efficiency": base["forward_s_median"] / (scale * row["forward_s_median"])}
    if "gradient_s_median" in row and "gradient_s_median" in base:
        out["gradient_efficiency"] = base["gradient_s_median"] / (scale * row["gradient_s_median"])
    return out


def check(dec: SlabDecomposition, steps: int, rank: int) -> dict | None:
    """Largest differences of the decomposed run from one device's (rank 0 computes both)."""
    f = distributed_run(dec, steps, gather=True)
    value, grads = distributed_value_and_grad(dec, steps, KineticEnergy(), wrt=("wall_velocity",), gather=True)
    if rank != 0:
        return None
    p = dec.problem
    ref = Solver(p).run(p.state(), steps).populations()
    ref_value, ref_grads = value_and_grad(p, p.parameters(), p.state(), steps, KineticEnergy(),
                                          wrt=("wall_velocity",))
    g, ref_g = np.asarray(grads.wall_velocity), np.asarray(ref_grads.wall_velocity)
    return {"steps": steps, "populations_max_abs_diff": float(np.abs(f - ref).max()),
            "loss_rel_diff": abs(value - ref_value) / abs(ref_value),
            "wall_velocity_grad_rel_diff": float(np.abs(g - ref_g).max() / np.abs(ref_g).max())}


def main(argv=None):
    args = parse_args(argv)
    if args.no_overlap and args.overlap_one_rank:
        raise SystemExit("--no-overlap and --overlap-one-rank exclude each other")
    import difflbm.distributed as DD
    if args.no_overlap:
        DD._OVERLAP = False
    elif args.overlap_one_rank:
        DD._OVERLAP = "always"
    group = Group(args.device, args.backend)
    G, N = group.world, int(args.size)
    steps = int(args.steps or (100 if group.cuda else 10))
    shape = (G * N, N, N) if args.mode == "weak" else (N, N, N)

    t0 = time.perf_counter()
    dec = SlabDecomposition(cavity(shape, group.device))
    lp = dec.local
    solver, params = Solver(lp), dec.local_parameters()
    states = [dec.local_state(), State.empty(lp)]
    group.sync()
    setup_s = group.slowest(time.perf_counter() - t0)

    def forward(n=steps):
        out = dec.advance(solver, states[0], states[1], params, n)
        if out is states[1]:
            states.reverse()

    forward(2)  # warm-up: kernel load, communicator set-up
    fwd = group.time(forward, args.repeats)
    cells = dec.problem.cell_count
    row = {
        "mode": args.mode, "world_size": G, "backend": group.backend,
        "device": torch.cuda.get_device_name(group.local_rank) if group.cuda else "cpu",
        "warp": wp.__version__, "torch": torch.__version__, "lattice": "D3Q19", "precision": "float32",
        "size": N, "global_shape": list(shape), "cells": cells, "cells_per_rank_max": max(n for _, n in dec.bounds)
        * dec.plane, "steps": steps, "repeats": args.repeats, "setup_s": setup_s,
        "forward_s_median": statistics.median(fwd), "forward_s_all": fwd,
        "forward_mlups": cells * steps / statistics.median(fwd) / 1e6,
        "forward_mlups_per_rank": cells * steps / statistics.median(fwd) / 1e6 / G,
        "env": {k: os.environ.get(k) for k in NVLS_OFF}, "overlap": dec.overlaps(),
        "overlap_switch": DD._OVERLAP,
    }
    if args.gradient:
        loss = KineticEnergy()
        adjoint = Checkpointed(segment=args.segment)

        def gradient(n=steps):
            distributed_value_and_grad(dec, n, loss, initial=states[0], adjoint=adjoint, wrt=("wall_velocity",),
                                       gather=False)

        gradient(2)  # warm-up: adjoint kernel load
        grad = group.time(gradient, max(1, args.repeats // 2))
        med = statistics.median(grad)
        row.update(gradient_s_median=med, gradient_s_all=grad, gradient_mlups_equivalent=cells * steps / med / 1e6,
                   gradient_over_forward=med / row["forward_s_median"], segment=args.segment)
    if args.check:
        row["check"] = check(dec, args.check, group.rank)
    if group.cuda:
        dev = wp.get_device(group.device)
        if wp.is_mempool_enabled(dev):
            row["peak_mempool_bytes"] = group.slowest(float(wp.get_mempool_used_mem_high(dev)))
    if args.baseline and group.rank == 0:
        row.update(efficiency(row, args.baseline))
    if group.rank == 0:
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
