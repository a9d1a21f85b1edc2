"""``hybrid.toml``: the hybrid set-up for ``mlip-md ipi --hybrid`` (and Python).

Example (every key but ``high``, ``low``, ``[region]`` and ``[switch]`` optional)::

    high = "mlip"                 # "emt", "mlip" (shipped model), "mlip:path/to/model.pt"
    low = "emt"
    device = "cpu"
    energy_shift = "auto"         # or a table {Cu = 3.51} (eV added to E_i^high), or absent
    [region]
    atom = 0                      # or point = [x, y, z] (Å), or group = [0, 1, 2]
    [switch]
    r_inner = 2.5                 # Å
    r_outer = 4.5                 # Å
    shape = "smootherstep"        # c3, cosine, cosine-c1
    buffer = 5.5                  # Å beyond r_outer in the high cluster (default: high cutoff)
    [mpi]
    high_ranks = 1                # ranks of the high-level group under mpiexec (default P // 2)
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Optional, Tuple

import ase.data
import numpy as np

from ..errors import HybridSetupError, UnknownElementError
from ..runtime.model_info import ModelInfo
from ..runtime.predictor import Prediction
from .hybrid import HybridModel
from .region import AtomCentre, FixedPoint, GroupCentroid, Region

KNOWN_KEYS = {"high", "low", "device", "energy_shift", "region", "switch", "mpi"}


def _region(table: dict) -> Region:
    given = [k for k in ("atom", "point", "group") if k in table]
    if len(given) != 1:
        raise HybridSetupError(f"[region] needs exactly one of atom = INDEX, point = [x, y, z] or group = [i, j, ...], "
                         f"got {sorted(table)}")
    kind = given[0]
    return {"atom": AtomCentre, "point": FixedPoint, "group": GroupCentroid}[kind](table[kind])


def load_hybrid_config(path) -> Tuple[HybridModel, dict]:
    """(HybridModel, the [mpi] table) from a hybrid.toml file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"hybrid configuration {path} does not exist; see mlip_md/qmml/config.py for an example")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise HybridSetupError(f"{path} is not valid TOML ({exc})") from None
    unknown = set(data) - KNOWN_KEYS
    if unknown:
        raise HybridSetupError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
    for key in ("high", "low", "region", "switch"):
        if key not in data:
            raise HybridSetupError(f"{path}: missing {key!r} (see mlip_md/qmml/config.py for an example)")
    sw = dict(data["switch"])
    if "r_inner" not in sw or "r_outer" not in sw:
        raise HybridSetupError(f"{path}: [switch] needs r_inner and r_outer (Å)")
    shift = data.get("energy_shift")
    if isinstance(shift, dict):
        shift = {int(ase.data.atomic_numbers[k]) if not str(k).isdigit() else int(k): float(v) for k, v in shift.items()}
    model = HybridModel(data["high"], data["low"], _region(data["region"]), (sw["r_inner"], sw["r_outer"]),
                        shape=sw.get("shape", "smootherstep"), buffer=sw.get("buffer"), energy_shift=shift,
                        device=data.get("device", "cpu"))
    return model, dict(data.get("mpi", {}))


class HybridEvaluator:
    """The hybrid as an :class:`~mlip_md.runtime.backend.Evaluator` for
    :class:`mlip_md.engines.ipi.client.Driver`: ``predict`` returns a
    :class:`~mlip_md.runtime.predictor.Prediction` of the hybrid without a committee
    (``energy_members`` None) and without monitors; ``info`` lists the elements both levels
    handle (no training statistics: no thresholds)."""

    def __init__(self, model: HybridModel, comm=None, high_ranks: Optional[int] = None):
        self.hybrid = model
        self.info = ModelInfo.without_file(model.known_numbers(), label="hybrid")
        from .mpi import hybrid_runner

        self.runner = hybrid_runner(model, comm, high_ranks)
        self.model_seconds = 0.0
        self.last = None

    def check_elements(self, numbers) -> None:
        unknown = sorted(set(np.unique(numbers).tolist()) - set(self.info.atomic_numbers))
        if unknown:
            raise UnknownElementError(f"elements {[ase.data.chemical_symbols[z] for z in unknown]} are not handled by "
                                      f"both hybrid levels (common elements: {', '.join(self.info.elements)})")

    def predict(self, numbers, positions, cell, pbc, monitors: bool = True, force_sigma: bool = False) -> Prediction:
        """The hybrid's energy (eV), per-atom energies [N], forces [N, 3] (eV/Å), virial and
        stress; ``monitors`` and ``force_sigma`` have nothing to compute."""
        import time

        start = time.perf_counter()
        res = self.runner.evaluate(numbers, positions, cell, pbc)
        self.model_seconds += time.perf_counter() - start
        self.last = res
        return Prediction(energy=res.energy, energies=res.energies, forces=res.forces, virial=res.virial,
                          stress=res.stress)

    def serve(self) -> None:
        """Ranks > 0: evaluate parts until rank 0 calls :meth:`shutdown`."""
        self.runner.serve()

    def shutdown(self) -> None:
        """Rank 0, at the end: release the other ranks."""
        self.runner.shutdown()


def hybrid_evaluator(path, comm=None) -> HybridEvaluator:
    """The i-PI evaluator described by a hybrid.toml (under MPI: split by its [mpi] table)."""
    model, mpi = load_hybrid_config(path)
    return HybridEvaluator(model, comm, high_ranks=mpi.get("high_ranks"))
