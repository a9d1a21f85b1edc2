"""The fixed held-out test set of a run: a labelled file, or snapshots of MD driven by the
oracle itself (every start structure at every test temperature), stored as ``kind=test`` rows.

Each (structure, temperature) trajectory is written in one transaction when it ends; a
trajectory interrupted by a crash is run again on resume (these are MD steps of the reference,
not labelling calls: use ``[test] file`` for expensive oracles).
"""
from __future__ import annotations

from typing import Callable, Dict, List

import ase
import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from ..reference import labelled
from ..train.data import read_structures
from .config import ActiveConfig
from .store import DONE


def oracle_md_snapshots(start: ase.Atoms, calc, temperature_K: float, snapshots: int, md_steps: int,
                        seed: int, timestep_fs: float = 2.0) -> List[ase.Atoms]:
    """Langevin MD with the reference calculator; a labelled snapshot every ``md_steps``."""
    rng = np.random.default_rng(seed)
    atoms = start.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs,
                   fixcm=False, rng=rng)
    frames = []
    for _ in range(snapshots):
        dyn.run(md_steps)
        frames.append(labelled(atoms))
    return frames


def ensure_test_set(config: ActiveConfig, store, starts: Dict[str, ase.Atoms], oracle,
                    log: Callable[[str], None] = print) -> List[ase.Atoms]:
    t = config.test
    if t.file:
        return read_structures(config.resolve(t.file))
    done = {row.origin for row in store.rows(kind="test")}
    for k, (name, start) in enumerate(starts.items()):
        for temperature in t.temperatures_K:
            origin = f"test {name} {temperature:g}K"
            if origin in done:
                continue
            frames = oracle_md_snapshots(start, oracle._factory(), temperature, t.snapshots, t.md_steps,
                                         seed=[config.run.seed, k, int(temperature), 3],
                                         timestep_fs=config.explore.timestep_fs)
            with store.db:
                for a in frames:
                    store.db.write(a, kind="test", status=DONE, iteration=-1, strategy="test", origin=origin,
                                   attempts=1, oracle=oracle.spec)
    frames = store.labelled("test")
    if not frames:
        raise ValueError("[test]: the test set is empty; give a file or temperatures_K and snapshots >= 1")
    return frames
