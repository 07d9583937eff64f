"""Validation cases: each module defines ``run(resolution=None, device=None, **options) -> dict``.

The returned dict holds the case's metrics, the settings used and ``passed`` (whether the metrics
meet the case's stated goal). ``CASES`` maps CLI names to modules, imported only when run.
"""

from __future__ import annotations

import importlib

CASES = {
    "taylor-green-2d": "taylor_green",
    "taylor-green-3d": "taylor_green",
    "poiseuille": "poiseuille",
    "cavity": "cavity",
    "cylinder": "cylinder",
    "cavity-3d": "cavity3d",
}

__all__ = ["CASES", "run_case"]


def run_case(name: str, **options) -> dict:
    """Run validation case ``name`` (one of ``CASES``) and return its metrics."""
    if name not in CASES:
        raise ValueError(f"case={name!r} is not known; allowed: {', '.join(CASES)}")
    module = importlib.import_module(f"{__name__}.{CASES[name]}")
    if name.startswith("taylor-green"):
        options.setdefault("dim", 3 if name.endswith("3d") else 2)
    result = module.run(**options)
    result.setdefault("case", name)
    return result
