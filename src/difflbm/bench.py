"""Throughput of the 3D lid-driven cavity (the benchmark problem) and the device's copy bandwidth.

The problem: N^3 cells (N^2 for D2Q9), lid moving at 0.05 in x on the top face, bounce-back on the
other faces, omega = 1.0, BGK; all cells counted. Timings: warm-up excluded, device synchronized,
median of ``repeats``. The roofline is the device-to-device copy bandwidth measured in the same run
divided by the bytes a step must move per cell: read and write Q populations (2 Q itemsize, issue
#6's 152 B for D3Q19 float32). The native step reads a cell's 4-byte code only on the faces and
inside the box of coded cells; ``roofline_fraction_with_code`` also counts 4 B of code per cell
(the fraction this benchmark reported up to the tenth session).
"""

from __future__ import annotations

import statistics
import time

import warp as wp

from . import kernels as K
from .adjoint import Checkpointed, value_and_grad
from .losses import KineticEnergy
from .native import native_adjoint_used
from .problem import Problem, Wall, resolve_device
from .solver import Solver

__all__ = ["run_bench", "copy_bandwidth", "cavity_problem"]


def cavity_problem(lattice="D3Q19", size=32, precision="float32", device=None) -> Problem:
    dim = 2 if lattice.upper() == "D2Q9" else 3
    lid = "y+" if dim == 2 else "z+"
    return Problem((size,) * dim, lattice, "bgk", omega=1.0, precision=precision, device=device,
                   boundaries=[Wall(face=lid, velocity=(0.05,) + (0.0,) * (dim - 1))] +
                   [Wall(face=f) for f in ("x-", "x+", "y-", "y+", "z-", "z+")[: 2 * dim] if f != lid])


def _time(fn, device, repeats):
    times = []
    for _ in range(repeats):
        wp.synchronize_device(device)
        t0 = time.perf_counter()
        fn()
        wp.synchronize_device(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def copy_bandwidth(device, nbytes=2 * 1024**3, repeats=10) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written), median of repeats."""
    n = nbytes // 4
    a = wp.empty(n, dtype=wp.float32, device=device)
    b = wp.empty(n, dtype=wp.float32, device=device)
    a.fill_(1.0)
    wp.copy(b, a)
    med, _ = _time(lambda: wp.copy(b, a), device, repeats)
    return 2 * n * 4 / med


def ensemble_cavity_problem(members, size=128, precision="float32", device=None) -> Problem:
    """``members`` 2D cavities of size^2 cells stacked into one launch (difflbm.ensemble)."""
    from .ensemble import Ensemble
    return Ensemble([cavity_problem("D2Q9", size, precision, device) for _ in range(int(members))]).problem


def run_bench(lattice="D3Q19", precision="fp32", size=None, steps=None, gradient=False, device=None, repeats=5,
              graph=True, ensemble=0) -> dict:
    """Forward (and optionally gradient) throughput; ``ensemble=B`` benchmarks B stacked 2D cavities
    of ``size``^2 cells (compare with one D2Q9 cavity of the same total cell count)."""
    dev = resolve_device(device)
    cuda = dev.is_cuda
    size = int(size or (256 if cuda else 32))
    steps = int(steps or (100 if cuda else 10))
    steps += steps % 2  # even: the ping-pong ends where it started, so a graph can be replayed
    prec = {"fp16": "float16", "fp32": "float32", "fp64": "float64"}.get(precision, precision)
    if ensemble:
        if lattice.upper() != "D2Q9":
            raise ValueError(f"lattice={lattice!r} with ensemble={ensemble}: ensembles stack D2Q9 problems only")
        p = ensemble_cavity_problem(ensemble, size, prec, dev)
    else:
        p = cavity_problem(lattice, size, prec, dev)
    solver = Solver(p)
    params = p.parameters()
    a, b = p.state(), p.state()

    solver.update_wall_term(params)  # fixed lid velocity: the wall terms once, as in Solver.run

    def forward():
        for _ in range(steps // 2):
            solver.step(a, b, params, update_walls=False)
            solver.step(b, a, params, update_walls=False)

    forward()  # warm-up: compiles and loads the kernel
    use_graph = graph and cuda
    if use_graph:
        with wp.ScopedCapture(device=dev, force_module_load=False) as cap:  # the warm-up loaded the kernel
            forward()
        run = lambda: wp.capture_launch(cap.graph)  # noqa: E731
        run()
    else:
        run = forward
    med, times = _time(run, dev, repeats)
    cells = p.cell_count
    itemsize = {"float16": 2, "float32": 4, "float64": 8}[p.precision]
    bytes_per_cell = 2 * p.lattice.q * itemsize
    out = {
        "device": str(dev.name if cuda else "cpu"), "warp": wp.__version__, "lattice": p.lattice.name,
        "ensemble_members": int(ensemble),
        "precision": p.precision, "size": size, "cells": cells, "steps": steps, "repeats": repeats,
        "cuda_graph": use_graph, "native_step": solver.native_step, "native_form": solver.native_form,
        "native_constants": solver.native_constants, "float16_collision": (
            "deviation" if K.deviation_collision(p.config) else "shifted") if p.precision == "float16" else None,
        "forward_s_median": med, "forward_mlups": cells * steps / med / 1e6,
        "bytes_per_cell_update": bytes_per_cell,
    }
    if cuda:
        bw = copy_bandwidth(dev)
        roof = bw / bytes_per_cell / 1e6
        out.update(copy_bandwidth_gbs=bw / 1e9, roofline_mlups=roof, roofline_fraction=out["forward_mlups"] / roof,
                   roofline_fraction_with_code=out["forward_mlups"] * (bytes_per_cell + 4) * 1e6 / bw)
    if gradient:
        st = p.state()
        loss = KineticEnergy()
        # warm-up with the same rollout length as the timed calls: kernels loaded, first use of each
        # segment shape done (a gradient call runs a segment shape eagerly once, then captures it)
        for _ in range(2):
            value_and_grad(p, params, st, steps, loss, adjoint=Checkpointed(), wrt=("initial", "wall_velocity"),
                           graph=graph)
        if cuda:
            wp.synchronize_device(dev)
            mem0 = wp.get_mempool_used_mem_current(dev) if wp.is_mempool_enabled(dev) else 0
        last = {}

        def gradient():
            last["schedule"] = value_and_grad(p, params, st, steps, loss, adjoint=Checkpointed(),
                                              wrt=("initial", "wall_velocity"), graph=graph)[1].schedule

        gmed, _ = _time(gradient, dev, max(3, repeats // 2))
        # whether the moments adjoint that writes the gathered form had a native body (moments replay)
        native_adjoint = last["schedule"]["replay"] == "moments" and native_adjoint_used(p.config, cells, True, False)
        out.update(native_adjoint=native_adjoint,
                   gradient_s_median=gmed, gradient_mlups_equivalent=cells * steps / gmed / 1e6,
                   gradient_over_forward=gmed / med, gradient_schedule=last["schedule"])
        if cuda and wp.is_mempool_enabled(dev):
            out["peak_mempool_bytes"] = int(wp.get_mempool_used_mem_high(dev))
            out["mempool_before_gradient_bytes"] = int(mem0)
    return out
