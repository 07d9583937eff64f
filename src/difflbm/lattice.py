"""Velocity sets: D2Q9, D3Q19, D3Q27 (Qian, d'Humieres & Lallemand 1992)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

__all__ = ["Lattice", "get_lattice", "LATTICE_NAMES"]

LATTICE_NAMES = ("D2Q9", "D3Q19", "D3Q27")


@dataclass(frozen=True)
class Lattice:
    """An immutable discrete velocity set.

    ``velocities`` has shape (Q, D) (integers), ``weights`` shape (Q,), ``opposite[i]`` is the
    index of -c_i. The speed of sound squared is 1/3 in lattice units for all three sets.
    """

    name: str
    velocities: np.ndarray
    weights: np.ndarray
    opposite: np.ndarray = field(init=False)

    def __post_init__(self):
        c = self.velocities
        opp = np.array([int(np.flatnonzero((c == -c[i]).all(axis=1))[0]) for i in range(len(c))])
        object.__setattr__(self, "opposite", opp)
        for arr in (self.velocities, self.weights, self.opposite):
            arr.setflags(write=False)

    @property
    def dim(self) -> int:
        return self.velocities.shape[1]

    @property
    def q(self) -> int:
        return self.velocities.shape[0]

    cs2 = 1.0 / 3.0  # speed of sound squared, lattice units

    def velocities3(self) -> np.ndarray:
        """Velocities padded to three components, shape (Q, 3); 2D sets get cz = 0."""
        out = np.zeros((self.q, 3), dtype=np.int64)
        out[:, : self.dim] = self.velocities
        return out


def _build(name: str) -> Lattice:
    if name == "D2Q9":
        dirs = [(x, y) for x in (-1, 0, 1) for y in (-1, 0, 1)]
    elif name == "D3Q19":
        dirs = [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)
                if abs(x) + abs(y) + abs(z) <= 2]
    elif name == "D3Q27":
        dirs = [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)]
    else:
        raise ValueError(f"lattice={name!r} is not known; allowed: {', '.join(LATTICE_NAMES)}")
    # rest population first, then by speed, for readability of dumps
    dirs.sort(key=lambda d: (sum(abs(v) for v in d), d))
    c = np.array(dirs, dtype=np.int64)
    speed2 = (c * c).sum(axis=1)
    table = {
        "D2Q9": {0: 4 / 9, 1: 1 / 9, 2: 1 / 36},
        "D3Q19": {0: 1 / 3, 1: 1 / 18, 2: 1 / 36},
        "D3Q27": {0: 8 / 27, 1: 2 / 27, 2: 1 / 54, 3: 1 / 216},
    }[name]
    w = np.array([table[int(s)] for s in speed2], dtype=np.float64)
    return Lattice(name=name, velocities=c, weights=w)


@lru_cache(maxsize=None)
def get_lattice(name: str) -> Lattice:
    """Return the lattice called ``name`` (one of D2Q9, D3Q19, D3Q27)."""
    if not isinstance(name, str):
        raise TypeError(f"lattice={name!r} must be a string; allowed: {', '.join(LATTICE_NAMES)}")
    return _build(name.upper())
