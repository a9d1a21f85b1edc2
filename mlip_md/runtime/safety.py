"""The default safety policy every engine applies: close contacts and out-of-domain atoms.

Two checks run on every evaluation that computed the monitor values (ASE calculator: every
call; i-PI driver: every ``--monitor-every`` step; the LAMMPS plugin mirrors them in C++,
lammps_interface/src/mlip_monitor.cpp, with the same wording):

* close contact: an atom closer to a neighbour than any pair of that element pair seen in
  training (``min_distance_ratio < 1``; table ``monitors.pair_min_distance`` of the model's
  metadata). Response ``close_contact``: ``warn`` (default), ``halt`` (:class:`CloseContactHalt`;
  the i-PI driver turns it into i-PI's soft exit), ``dump`` (warn and append the frame to an
  extxyz file) or ``ignore``.
* out of domain: per-atom Mahalanobis T² above the largest value of the training set, or d_min
  above the largest held-out value (:func:`mlip_md.runtime.monitors.domain_thresholds`). Warned about by
  default (``ood_warnings=False`` turns it off). On a step with a close contact the contact
  message is the report (its neighbours are out of domain too) and no second message is made.

Both messages are rate-limited (:class:`RateLimiter`): the first occurrence, then at most one
message per ``gap`` steps, the gap doubling from 10 to 10 000 steps; each repeat says how many
steps and atoms were flagged since the previous message. A "step" is one evaluation of the
engine (an ASE calculator call, an i-PI request, a LAMMPS time step).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Union

import ase
import ase.data
import numpy as np

from ..errors import CloseContactWarning, InvalidStructureError
from .monitors import DomainThresholds, Event, ExtrapolationWarning, _append_frame, annotated_frame, domain_thresholds

CLOSE_CONTACT_ACTIONS = ("warn", "halt", "dump", "ignore")
FIRST_GAP = 10  # steps between the first and the second message
MAX_GAP = 10_000  # the gap doubles after each message up to this many steps


class OutOfDomainWarning(ExtrapolationWarning):
    """Atoms further from the training data (T², d_min) than anything in training."""


class CloseContactHalt(InvalidStructureError):
    """``close_contact="halt"``: two atoms are closer than any training pair; the run stops."""


class RateLimiter:
    """First occurrence, then at most one report per ``gap`` steps (gap doubling from
    ``first_gap`` up to ``max_gap``). ``record(step, n_atoms)`` on every step the condition holds;
    it returns None (quiet) or ``(steps, atoms, last_step)``: steps and atoms (summed over those
    steps) flagged since the previous report, this step included, and that report's step (-1
    for the first)."""

    def __init__(self, first_gap: int = FIRST_GAP, max_gap: int = MAX_GAP):
        self.gap = int(first_gap)
        self.max_gap = int(max_gap)
        self.last_step = -1
        self.steps = 0
        self.atoms = 0
        self.reports = 0

    def record(self, step: int, n_atoms: int) -> Optional[tuple]:
        self.steps += 1
        self.atoms += int(n_atoms)
        if self.reports and step - self.last_step < self.gap:
            return None
        if self.reports:
            self.gap = min(2 * self.gap, self.max_gap)
        summary = (self.steps, self.atoms, self.last_step)
        self.reports += 1
        self.last_step, self.steps, self.atoms = int(step), 0, 0
        return summary


def _since(summary: tuple, what: str) -> str:
    steps, atoms, last = summary
    if last < 0:
        return ""
    return f"; {steps} step(s) with {what} ({atoms} atom(s) in all) since the message on step {last}"


def close_contact_message(step: int, atom_a: int, atom_b: int, distance: float, ratio: float, pair: str,
                          reference: float, n_atoms: int, summary: tuple = (1, 1, -1), action: str = "warn") -> str:
    """The close-contact report, word for word the LAMMPS plugin's (format_close_contact in
    mlip_monitor.cpp). Distances in Å; ``pair`` like "Cu-Cu"; atoms are 0-based indices here,
    atom IDs in LAMMPS."""
    head = (f"mlip_md close contact on step {step}: atoms {atom_a} and {atom_b} are {distance:.3f} A apart, "
            f"{ratio:.2f} of the closest {pair} distance in training ({reference:.3f} A); {n_atoms} atom(s) "
            f"closer to a neighbour than in any training structure{_since(summary, 'close contacts')}; "
            "the model is extrapolating there")
    if action == "halt":
        return head + ". Stopping (close_contact halt): check the structure and the time step, or use close_contact warn to go on"
    return head + " (check the structure and the time step; close_contact halt stops, ignore silences this)"


def out_of_domain_message(step: int, n_atoms: int, t2: Optional[tuple], d_min: Optional[tuple],
                          summary: tuple = (1, 1, -1)) -> str:
    """The out-of-domain report, word for word the LAMMPS plugin's (format_out_of_domain in
    mlip_monitor.cpp). ``t2`` / ``d_min``: (largest value, threshold, atom) when above the
    threshold, else None."""
    parts = []
    if t2 is not None:
        parts.append(f"Mahalanobis T^2 {t2[0]:.4g} > {t2[1]:.4g} (largest in training) at atom {t2[2]}")
    if d_min is not None:
        parts.append(f"d_min {d_min[0]:.4g} > {d_min[1]:.4g} (largest held out) at atom {d_min[2]}")
    return (f"mlip_md out of domain on step {step}: {n_atoms} atom(s) beyond the training data: {', '.join(parts)}"
            f"{_since(summary, 'atoms out of domain')}; predictions there are extrapolations (ood_warnings off "
            "silences this)")


def _emit_warning(kind: str, message: str) -> None:
    warnings.warn(message, CloseContactWarning if kind == "close_contact" else OutOfDomainWarning, stacklevel=4)


@dataclasses.dataclass
class Report:
    kind: str  # "close_contact" or "out_of_domain"
    step: int
    message: str
    atoms: np.ndarray  # flagged atoms (indices)


class SafetyPolicy:
    """The default checks (module docstring) for one engine instance.

    ``thresholds``: from :func:`mlip_md.runtime.monitors.domain_thresholds`; ``report(kind, message)``
    delivers a message (default: ``warnings.warn`` with CloseContactWarning /
    OutOfDomainWarning; the i-PI driver logs it); ``dump_path``: extxyz file of
    ``close_contact="dump"``. ``reports`` keeps every report made.
    """

    def __init__(self, thresholds: DomainThresholds, close_contact: str = "warn", ood_warnings: bool = True,
                 dump_path: Union[str, Path, None] = "mlip_md_flagged.extxyz",
                 report: Optional[Callable[[str, str], None]] = None):
        if close_contact not in CLOSE_CONTACT_ACTIONS:
            raise ValueError(f"close_contact must be one of {', '.join(CLOSE_CONTACT_ACTIONS)}, got {close_contact!r}")
        if close_contact == "dump" and not dump_path:
            raise ValueError("close_contact='dump' appends frames to an extxyz file: give dump_path")
        self.thresholds = thresholds
        self.close_contact = close_contact
        self.ood_warnings = bool(ood_warnings)
        self.dump_path = Path(dump_path) if dump_path else None
        self.report = report or _emit_warning
        self.contacts = RateLimiter()
        self.out_of_domain = RateLimiter()
        self.reports: List[Report] = []
        self.step = -1

    @classmethod
    def for_model(cls, model, **kwargs) -> "SafetyPolicy":
        return cls(domain_thresholds(model), **kwargs)

    def observe(self, prediction, frame: Callable[[], ase.Atoms], step: Optional[int] = None) -> List[Report]:
        """Check one prediction (with monitor values; others are skipped). ``frame()`` returns
        the structure (only called when a message needs it). Raises CloseContactHalt."""
        self.step = self.step + 1 if step is None else int(step)
        if prediction.min_distance_ratio is None and prediction.mahalanobis is None:
            return []
        present, report = self._contacts(prediction, frame)
        if not present and self.ood_warnings:
            report = self._out_of_domain(prediction)
        return [] if report is None else [report]

    # ------------------------------------------------------------------ checks
    def _contacts(self, prediction, frame) -> tuple:
        """(whether a close contact is present and not ignored, the Report made or None). A
        present contact stands in for the out-of-domain check even while its messages are
        rate-limited."""
        ratio = prediction.min_distance_ratio
        if self.close_contact == "ignore" or ratio is None:
            return False, None
        close = np.flatnonzero(ratio < 1.0)
        if close.size == 0:
            return False, None
        summary = self.contacts.record(self.step, close.size)
        if summary is None:  # rate-limited; a halt stops on every step with a contact
            if self.close_contact != "halt":
                return True, None
            summary = (1, close.size, -1)
        atoms = frame()
        worst = int(close[np.argmin(ratio[close])])
        partner, distance, reference = self._partner(atoms, worst, float(ratio[worst]),
                                                     float(prediction.min_distance[worst]))
        first, second = sorted((worst, partner))  # named in index order, as in LAMMPS (IDs)
        pair = "-".join(ase.data.chemical_symbols[atoms.numbers[k]] for k in (first, second))
        message = close_contact_message(self.step, first, second, distance, distance / reference, pair, reference,
                                        close.size, summary, self.close_contact)
        report = Report("close_contact", self.step, message, close)
        self.reports.append(report)
        if self.close_contact == "halt":
            raise CloseContactHalt(message)
        if self.close_contact == "dump":
            event = Event(self.step, "min_distance_ratio", float(ratio[worst]), 1.0, close)
            _append_frame(self.dump_path, annotated_frame(atoms, prediction, event))
            message += f"; frame appended to {self.dump_path}"
            report.message = message
        self.report("close_contact", message)
        return True, report

    def _partner(self, atoms: ase.Atoms, atom: int, ratio: float, nearest: float) -> tuple:
        """(neighbour of ``atom`` with the smallest distance / training minimum, its distance Å,
        that element pair's training minimum Å). Without a table in the metadata (an evaluator
        that only reports the ratios): the nearest neighbour, its minimum from ``ratio``; a
        lone atom in a tiny periodic cell: its own image at ``nearest`` Å."""
        others = np.delete(np.arange(len(atoms)), atom)
        if others.size == 0:
            return atom, nearest, nearest / ratio
        distances = atoms.get_distances(atom, others, mic=bool(atoms.pbc.any()))
        references = np.array([self.thresholds.pair_distance(atoms.numbers[atom], z) for z in atoms.numbers[others]])
        if not np.isfinite(references).any():
            k = int(np.argmin(distances))
            return int(others[k]), float(distances[k]), float(distances[k] / ratio)
        k = int(np.argmin(distances / references))
        return int(others[k]), float(distances[k]), float(references[k])

    def _out_of_domain(self, prediction) -> Optional[Report]:
        limits = self.thresholds
        flagged = np.zeros(0, dtype=np.int64)
        signals = {}
        for name, per_atom, threshold in (("t2", prediction.mahalanobis, limits.mahalanobis),
                                          ("d_min", prediction.d_min, limits.d_min)):
            if per_atom is None or not np.isfinite(threshold):
                continue
            above = np.flatnonzero(per_atom > threshold)
            if above.size:
                worst = int(above[np.argmax(per_atom[above])])
                signals[name] = (float(per_atom[worst]), threshold, worst)
                flagged = np.union1d(flagged, above)
        if not flagged.size:
            return None
        summary = self.out_of_domain.record(self.step, flagged.size)
        if summary is None:
            return None
        message = out_of_domain_message(self.step, flagged.size, signals.get("t2"), signals.get("d_min"), summary)
        report = Report("out_of_domain", self.step, message, flagged)
        self.reports.append(report)
        self.report("out_of_domain", message)
        return report
