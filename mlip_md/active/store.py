"""The run store: every configuration the loop sends to the oracle, with its provenance, in an
ASE database (SQLite; browse it with ``ase db DIR/labels.db``), plus the run state as JSON.

A row is written as ``status=pending`` (no labels) before its oracle call, in one transaction
with the rest of its batch; the labelled result replaces it in one transaction
(``status=done``, energy/forces/stress, oracle wall time). A crash therefore leaves every
configuration either pending (its call is made again on resume, once) or done (never called
again). Failed calls set ``status=failed`` with the error and keep the configuration for
a retry, up to ``max_attempts`` calls.

Key-value pairs of a row: kind ("train" | "test"), status, iteration, strategy, origin,
attempts, oracle, wall_time (s), error, and the trigger values t2_max, t2_threshold,
energy_sigma_max (eV), force_sigma_max (eV/Å), score.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import ase
import ase.db
from ase.calculators.singlepoint import SinglePointCalculator

from ..files import atomic_write_text

PENDING, DONE, FAILED = "pending", "done", "failed"
TRIGGER_KEYS = ("t2_max", "t2_threshold", "energy_sigma_max", "force_sigma_max", "score")


class Store:
    """Files of one run directory: labels.db, state.json, models/, oracle_calls.log."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "models").mkdir(exist_ok=True)
        self.db_path = self.directory / "labels.db"
        self.state_path = self.directory / "state.json"
        self.db = ase.db.connect(str(self.db_path), type="db", append=True)

    # ----------------------------------------------------------------- state
    def load_state(self) -> Optional[dict]:
        if not self.state_path.exists():
            return None
        return json.loads(self.state_path.read_text())

    def save_state(self, state: dict) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=1))

    def model_path(self, iteration: int) -> Path:
        return self.directory / "models" / f"iter_{iteration:03d}.pt"

    def checkpoint_dir(self, iteration: int) -> Path:
        return self.directory / "models" / f"iter_{iteration:03d}.ckpt"

    # ------------------------------------------------------------------ rows
    def add_pending(self, items: Iterable[dict]) -> List[int]:
        """Insert configurations awaiting labels in ONE transaction. Each item: atoms plus
        key-value pairs (kind, iteration, strategy, origin, trigger values)."""
        ids = []
        with self.db:
            for item in items:
                item = dict(item)
                atoms = item.pop("atoms").copy()
                atoms.calc = None
                kvp = {k: _plain(v) for k, v in item.items() if v is not None}
                kvp.setdefault("attempts", 0)
                ids.append(self.db.write(atoms, status=PENDING, **kvp))
        return ids

    def to_label(self, kind: str, max_attempts: int) -> List[ase.db.row.AtomsRow]:
        """Pending rows and failed rows with attempts left, in insertion order."""
        rows = [r for r in self.db.select(kind=kind) if r.status == PENDING
                or (r.status == FAILED and r.attempts < max_attempts)]
        return sorted(rows, key=lambda r: r.id)

    def mark_done(self, row_id: int, labelled: ase.Atoms, **kvp) -> None:
        """Replace a row by its labelled configuration (one transaction)."""
        self.db.update(row_id, atoms=labelled, status=DONE, error="", **{k: _plain(v) for k, v in kvp.items()})

    def mark_failed(self, row_id: int, error: str, **kvp) -> None:
        self.db.update(row_id, status=FAILED, error=error[:500], **{k: _plain(v) for k, v in kvp.items()})

    def count(self, **selection) -> int:
        return self.db.count(**selection)

    def rows(self, **selection) -> List[ase.db.row.AtomsRow]:
        return sorted(self.db.select(**selection), key=lambda r: r.id)

    def labelled(self, kind: str = "train") -> List[ase.Atoms]:
        """Done rows of ``kind`` as Atoms carrying their labels (SinglePointCalculator)."""
        frames = []
        for row in self.rows(kind=kind, status=DONE):
            atoms = row.toatoms()
            results = {"energy": row.energy, "forces": row.forces}
            if row.get("stress") is not None:
                results["stress"] = row.stress
            atoms.calc = SinglePointCalculator(atoms, **results)
            frames.append(atoms)
        return frames

    def iterations_with_rows(self, kind: str = "train") -> Dict[int, int]:
        counts: Dict[int, int] = {}
        for row in self.db.select(kind=kind):
            counts[row.iteration] = counts.get(row.iteration, 0) + 1
        return counts


def _plain(value):
    """ASE db key-value pairs take bool, int, float and str only."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
