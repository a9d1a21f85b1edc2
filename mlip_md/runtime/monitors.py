"""Monitor policy: thresholds on uncertainty / domain signals -> actions.

One policy object serves every Python engine (ASE calculator, i-PI driver); the LAMMPS plugin
mirrors it with its own keywords. Signals are reduced over atoms per step:

    energy_sigma        max per-atom calibrated ensemble std (eV)
    force_sigma         max per-atom, per-component force std (eV/Å; needs force_sigma=True)
    energy_uncertainty  std of the total energy over members (eV)
    mahalanobis         max per-atom T^2 of the descriptors
    d_min               max per-atom kernel distance to the training set (when the model has it)
    min_distance_ratio  min over atoms of (closest neighbour / closest seen in training);
                        fires when it drops BELOW the threshold (default rule at 1.0)

Actions: ``warn`` (ExtrapolationWarning), ``dump`` (append the frame with per-atom arrays to an
extxyz file, fsync'd), ``label`` (append to a candidates file for active learning), ``halt``
(raise ExtrapolationHalt; engines stop cleanly), ``callback`` (a user function).

Hysteresis: a rule that fired re-arms only once its signal returns past
threshold x (1 - hysteresis) (or x (1 + hysteresis) for lower-bound signals). Cooldown: after
firing, a rule stays quiet for ``cooldown`` observations. Near-duplicate suppression: a frame is
not dumped/labelled again when the descriptor of its most extreme atom lies within
``dedupe_distance`` (RMS over descriptor components, standardised units) of one already written.

These rules are what a user configures; the checks every engine applies by default (close
contacts, out-of-domain warnings, rate-limited) are :mod:`mlip_md.runtime.safety`, with the thresholds
from :func:`domain_thresholds`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import ase
import ase.io
import numpy as np

from .model_info import DomainLimits, ModelInfo

ACTIONS = ("warn", "dump", "label", "halt", "callback")
LOWER_BOUND_SIGNALS = ("min_distance_ratio",)
SIGNALS = ("energy_sigma", "force_sigma", "energy_uncertainty", "mahalanobis", "d_min", "min_distance_ratio")


class ExtrapolationWarning(UserWarning):
    """A monitored signal crossed its threshold: the model is outside its training domain."""


class ExtrapolationHalt(RuntimeError):
    """Raised by a ``halt`` rule; engines catch it and stop the run cleanly."""

    def __init__(self, event: "Event"):
        super().__init__(event.describe())
        self.event = event


@dataclasses.dataclass
class Rule:
    """``signal`` crossing ``threshold`` triggers ``actions`` (names from ACTIONS)."""

    signal: str
    threshold: float
    actions: Sequence[str] = ("warn",)

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown monitor signal {self.signal!r}; choose from {', '.join(SIGNALS)}")
        if isinstance(self.actions, str):
            self.actions = (self.actions,)
        bad = [a for a in self.actions if a not in ACTIONS]
        if bad:
            raise ValueError(f"unknown monitor action(s) {bad}; choose from {', '.join(ACTIONS)}")
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold of {self.signal} must be finite, got {self.threshold}")

    @property
    def lower_bound(self) -> bool:
        return self.signal in LOWER_BOUND_SIGNALS

    def crossed(self, value: float) -> bool:
        return value < self.threshold if self.lower_bound else value > self.threshold

    def rearmed(self, value: float, hysteresis: float) -> bool:
        if self.lower_bound:
            return value >= self.threshold * (1.0 + hysteresis)
        return value <= self.threshold * (1.0 - hysteresis)


@dataclasses.dataclass
class Event:
    step: int
    signal: str
    value: float
    threshold: float
    atoms: np.ndarray  # indices of the atoms beyond the threshold

    def describe(self) -> str:
        relation = "below" if self.signal in LOWER_BOUND_SIGNALS else "above"
        where = f"atoms {self.atoms[:8].tolist()}{'...' if self.atoms.size > 8 else ''}" if self.atoms.size else "the structure"
        return (f"step {self.step}: {self.signal} = {self.value:.4g} {relation} threshold {self.threshold:.4g} "
                f"({where}); the model is extrapolating")


def signal_values(prediction) -> Dict[str, tuple]:
    """{signal: (value, per-atom array or None)} available in a Prediction."""
    values: Dict[str, tuple] = {"energy_uncertainty": (float(prediction.energy_uncertainty), None)}
    for name in ("energy_sigma", "mahalanobis", "d_min"):
        per_atom = getattr(prediction, name, None)
        if per_atom is not None and len(per_atom):
            values[name] = (float(np.max(per_atom)), per_atom)
    if getattr(prediction, "force_sigma", None) is not None:
        per_atom = prediction.force_sigma.max(axis=1)
        values["force_sigma"] = (float(per_atom.max()), per_atom)
    ratio = getattr(prediction, "min_distance_ratio", None)
    if ratio is not None and len(ratio):
        values["min_distance_ratio"] = (float(np.min(ratio)), ratio)
    return values


def _append_frame(path: Path, atoms: ase.Atoms) -> None:
    """Append one extxyz frame with a single write + fsync: a crash never leaves half a frame
    from a completed call, and earlier frames are never rewritten."""
    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz")
    data = buffer.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class MonitorPolicy:
    """Applies rules to every prediction an engine makes (``observe``).

    ``dump_path``/``label_path``: extxyz files frames are appended to; ``callback(event, atoms,
    prediction)`` for the ``callback`` action. ``events`` keeps every event seen.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        dump_path: Union[str, Path, None] = None,
        label_path: Union[str, Path, None] = None,
        callback: Optional[Callable] = None,
        hysteresis: float = 0.1,
        cooldown: int = 0,
        dedupe_distance: float = 0.0,
    ):
        self.rules = list(rules)
        self.dump_path = Path(dump_path) if dump_path else None
        self.label_path = Path(label_path) if label_path else None
        self.callback = callback
        if not 0 <= hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        self.hysteresis = hysteresis
        self.cooldown = int(cooldown)
        self.dedupe_distance = float(dedupe_distance)
        self._written: List[np.ndarray] = []  # descriptors of frames already dumped/labelled
        self.suppressed = 0
        for rule in self.rules:
            if "dump" in rule.actions and self.dump_path is None:
                raise ValueError(f"rule on {rule.signal} dumps frames: give dump_path")
            if "label" in rule.actions and self.label_path is None:
                raise ValueError(f"rule on {rule.signal} labels frames: give label_path")
            if "callback" in rule.actions and self.callback is None:
                raise ValueError(f"rule on {rule.signal} calls back: give callback")
        self._armed = [True] * len(self.rules)
        self._quiet_until = [-1] * len(self.rules)
        self.step = -1
        self.events: List[Event] = []

    def observe(self, atoms: ase.Atoms, prediction, step: Optional[int] = None) -> List[Event]:
        """Check one prediction; run the actions of every rule that fires. Returns the events."""
        self.step = self.step + 1 if step is None else int(step)
        values = signal_values(prediction)
        fired: List[tuple] = []
        for k, rule in enumerate(self.rules):
            if rule.signal not in values:
                continue
            value, per_atom = values[rule.signal]
            if not self._armed[k]:
                if rule.rearmed(value, self.hysteresis):
                    self._armed[k] = True
                continue
            if self.step < self._quiet_until[k] or not rule.crossed(value):
                continue
            if per_atom is None:
                flagged = np.zeros(0, dtype=np.int64)
            elif rule.lower_bound:
                flagged = np.flatnonzero(per_atom < rule.threshold)
            else:
                flagged = np.flatnonzero(per_atom > rule.threshold)
            event = Event(self.step, rule.signal, value, rule.threshold, flagged)
            self._armed[k] = False
            self._quiet_until[k] = self.step + self.cooldown + 1
            fired.append((event, rule))
        self.events.extend(event for event, _ in fired)
        halt = None
        write = any(a in ("dump", "label") for _, rule in fired for a in rule.actions) and self._novel(fired, prediction)
        for event, rule in fired:
            for action in rule.actions:
                if action == "warn":
                    warnings.warn(event.describe(), ExtrapolationWarning, stacklevel=3)
                elif action == "dump" and write:
                    _append_frame(self.dump_path, annotated_frame(atoms, prediction, event))
                elif action == "label" and write:
                    _append_frame(self.label_path, annotated_frame(atoms, prediction, event))
                elif action == "callback":
                    self.callback(event, atoms, prediction)
                elif action == "halt" and halt is None:
                    halt = event
        if halt is not None:
            raise ExtrapolationHalt(halt)
        return [event for event, _ in fired]


    def _novel(self, fired, prediction) -> bool:
        """False when this frame's most extreme environment is a near-duplicate of one written."""
        features = getattr(prediction, "features", None)
        if self.dedupe_distance <= 0 or features is None:
            return True
        event = fired[0][0]
        values = signal_values(prediction)[event.signal][1]
        atom = 0 if values is None else int(np.argmin(values) if event.signal in LOWER_BOUND_SIGNALS else np.argmax(values))
        signature = np.asarray(features[atom], dtype=float)
        for previous in self._written:
            if np.sqrt(np.mean((previous - signature) ** 2)) < self.dedupe_distance:
                self.suppressed += 1
                return False
        self._written.append(signature)
        return True


def annotated_frame(atoms: ase.Atoms, prediction, event: Optional[Event] = None) -> ase.Atoms:
    """A copy of ``atoms`` with the prediction and per-atom uncertainty arrays attached."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    for name in ("energy_sigma", "mahalanobis", "d_min", "min_distance_ratio"):
        value = getattr(prediction, name, None)
        if value is not None:
            frame.arrays[name] = np.asarray(value, dtype=float)
    if getattr(prediction, "force_sigma", None) is not None:
        frame.arrays["force_sigma"] = np.asarray(prediction.force_sigma, dtype=float)
    if event is not None:
        frame.info.update(step=event.step, signal=event.signal, value=event.value, threshold=event.threshold)
    results = {"energy": prediction.energy, "forces": prediction.forces}
    if prediction.stress is not None:
        from ase.stress import full_3x3_to_voigt_6_stress

        results["stress"] = full_3x3_to_voigt_6_stress(prediction.stress)
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


@dataclasses.dataclass(frozen=True)
class DomainThresholds:
    """Where a model's training data ends (:class:`~mlip_md.runtime.model_info.DomainLimits`
    reduced to what the checks compare with):

    mahalanobis: largest per-atom T^2 of the training set (``training_max``, largest over
        elements; the 99.9 % quantile ``empirical`` for files without it); inf when unknown.
    d_min: largest d_min of held-out training environments (``holdout_max``, likewise); inf
        when the model has no d_min.
    pair_min_distance: {(Z_a, Z_b): closest distance of that pair in training, Å}.
    """

    mahalanobis: float = float("inf")
    d_min: float = float("inf")
    pair_min_distance: Dict[tuple, float] = dataclasses.field(default_factory=dict)

    def pair_distance(self, za: int, zb: int) -> float:
        """Closest training distance of the pair (Å); inf when the pair never occurred."""
        value = self.pair_min_distance.get((int(za), int(zb)), 0.0)
        return value if value > 0 else float("inf")


def domain_thresholds(model) -> DomainThresholds:
    """The thresholds of ``model``: a :class:`ModelInfo`, anything with ``.info`` (a backend, an
    evaluator) or a metadata dict: the one accessor every engine and report uses."""
    if isinstance(model, ModelInfo):
        limits = model.domain
    elif isinstance(model, dict):
        limits = DomainLimits.from_metadata(model)
    else:
        limits = model.info.domain
    return DomainThresholds(limits.mahalanobis_threshold(), limits.d_min_threshold(), dict(limits.pair_min_distances))


def default_policy(model, actions: Sequence[str] = ("warn",), **kwargs) -> MonitorPolicy:
    """Rules from the model's training statistics (:func:`domain_thresholds`): close contacts (ratio 1.0),
    T^2 above the largest value of the training set and d_min above the largest value of
    held-out training environments (largest over elements): "further out than anything like
    the training data"."""
    limits = domain_thresholds(model)
    rules = [Rule("min_distance_ratio", 1.0, actions)]
    for signal, threshold in (("mahalanobis", limits.mahalanobis), ("d_min", limits.d_min)):
        if np.isfinite(threshold):
            rules.append(Rule(signal, threshold, actions))
    return MonitorPolicy(rules, **kwargs)
