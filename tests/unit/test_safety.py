"""The default safety policy (mlip_md.runtime.safety): rate limiting, the messages, and the ASE
calculator's close-contact / out-of-domain warnings with the shipped model."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.io import read

from mlip_md import MLIPCalculator
from mlip_md.errors import CloseContactWarning, InvalidStructureError
from mlip_md.runtime.factory import load_model
from mlip_md.runtime.monitors import DomainThresholds, ExtrapolationWarning, domain_thresholds
from mlip_md.runtime.predictor import Prediction
from mlip_md.runtime.safety import (CloseContactHalt, OutOfDomainWarning, RateLimiter, SafetyPolicy, close_contact_message,
                            out_of_domain_message)

# the shipped model: closest Cu-Cu pair in training, largest training T^2, largest held-out d_min
PAIR_MIN, T2_MAX, D_MIN_MAX = 1.9717890410861696, 4534.9630327758005, 1.2078317861232575


def isolated_atom() -> Atoms:
    return Atoms("Cu", positions=[[10.0, 10.0, 10.0]], cell=[20.0, 20.0, 20.0], pbc=True)


def squeezed_pair() -> Atoms:
    """108 fcc Cu atoms with atom 1 moved to 0.05 Å from atom 0."""
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(3)
    atoms.positions[1] = atoms.positions[0] + [0.05, 0.0, 0.0]
    return atoms


def evaluate(calc: MLIPCalculator, atoms: Atoms, times: int) -> list:
    """``times`` calculator calls (each one step) on ``atoms``; the warnings they raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(times):
            calc.calculate(atoms, ["energy"], all_changes)
    return caught


def of(caught, category) -> list:
    return [str(w.message) for w in caught if issubclass(w.category, category)]


# ------------------------------------------------------------------ pieces
def test_rate_limiter_first_then_doubling_gaps_with_counts():
    limiter = RateLimiter(first_gap=10, max_gap=40)
    reports = {step: limiter.record(step, 2) for step in range(200)}
    fired = {step: summary for step, summary in reports.items() if summary is not None}
    # first occurrence, then gaps 10, 20, 40, 40, ... (capped)
    assert sorted(fired) == [0, 10, 30, 70, 110, 150, 190]
    assert fired[0] == (1, 2, -1)
    assert fired[10] == (10, 20, 0)  # steps 1..10, two atoms each, since the message on step 0
    assert fired[30] == (20, 40, 10)
    # steps with the condition absent are not recorded: the next occurrence after the gap reports
    limiter = RateLimiter()
    assert limiter.record(5, 1) == (1, 1, -1)
    assert limiter.record(9, 3) is None
    assert limiter.record(500, 1) == (2, 4, 5)


def test_messages_word_for_word():
    assert close_contact_message(3, 0, 1, 0.05, 0.05 / PAIR_MIN, "Cu-Cu", PAIR_MIN, 2) == (
        "mlip_md close contact on step 3: atoms 0 and 1 are 0.050 A apart, 0.03 of the closest Cu-Cu distance in "
        "training (1.972 A); 2 atom(s) closer to a neighbour than in any training structure; the model is "
        "extrapolating there (check the structure and the time step; close_contact halt stops, ignore silences this)")
    halted = close_contact_message(10, 4, 7, 1.5, 0.76, "Cu-Cu", PAIR_MIN, 2, (10, 20, 0), action="halt")
    assert "; 10 step(s) with close contacts (20 atom(s) in all) since the message on step 0;" in halted
    assert halted.endswith("Stopping (close_contact halt): check the structure and the time step, or use "
                           "close_contact warn to go on")
    assert out_of_domain_message(0, 1, (8399.8, T2_MAX, 0), (1.3576, D_MIN_MAX, 0)) == (
        "mlip_md out of domain on step 0: 1 atom(s) beyond the training data: Mahalanobis T^2 8400 > 4535 (largest "
        "in training) at atom 0, d_min 1.358 > 1.208 (largest held out) at atom 0; predictions there are "
        "extrapolations (ood_warnings off silences this)")
    only_d = out_of_domain_message(20, 3, None, (1.3, 1.2, 5), (7, 21, 10))
    assert "training data: d_min 1.3 > 1.2 (largest held out) at atom 5; 7 step(s) with atoms out of domain " \
           "(21 atom(s) in all) since the message on step 10;" in only_d


def test_domain_thresholds_from_metadata():
    limits = domain_thresholds(load_model())
    assert limits.mahalanobis == pytest.approx(T2_MAX) and limits.d_min == pytest.approx(D_MIN_MAX)
    assert limits.pair_distance(29, 29) == pytest.approx(PAIR_MIN)
    assert limits.pair_distance(29, 28) == np.inf  # never seen: never a contact
    # files without training_max / holdout_max fall back to the quantile; without monitors: unknown
    meta = {"monitors": {"mahalanobis": {"per_element": {"29": {"empirical": 50.0}, "28": {"empirical": 80.0,
                                                                                         "training_max": 70.0}}}}}
    assert domain_thresholds(meta) == DomainThresholds(mahalanobis=70.0)  # max(50, 70): training_max first
    assert domain_thresholds({}) == DomainThresholds()


def prediction(t2, ratio, d_min=None) -> Prediction:
    n = len(t2)
    return Prediction(energy=0.0, energies=np.zeros(n), forces=np.zeros((n, 3)), virial=np.zeros((3, 3)),
                      stress=None, energy_members=np.zeros((2, n)), mahalanobis=np.asarray(t2, float),
                      d_min=None if d_min is None else np.asarray(d_min, float),
                      min_distance=2.0 * np.asarray(ratio, float), min_distance_ratio=np.asarray(ratio, float))


def test_contact_stands_in_for_out_of_domain_and_options_switch_off():
    limits = DomainThresholds(mahalanobis=100.0, d_min=1.0, pair_min_distance={(29, 29): 2.0})
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.0, 0, 0]], cell=[10, 10, 10], pbc=True)
    seen = []
    policy = SafetyPolicy(limits, report=lambda kind, message: seen.append((kind, message)))
    both = prediction([500.0, 400.0], [0.5, 0.5])
    for step in range(12):  # a contact on every step: its messages alone, rate-limited
        policy.observe(both, lambda: atoms)
    assert [kind for kind, _ in seen] == ["close_contact", "close_contact"]
    assert "atoms 0 and 1 are 1.000 A apart, 0.50 of the closest Cu-Cu distance in training (2.000 A)" in seen[0][1]
    assert "on step 10:" in seen[1][1] and "10 step(s) with close contacts (20 atom(s) in all)" in seen[1][1]
    # the contact gone, the atoms still out of domain: now that is reported
    policy.observe(prediction([500.0, 40.0], [1.2, 1.2], d_min=[0.5, 2.0]), lambda: atoms)
    assert seen[-1][0] == "out_of_domain" and "2 atom(s) beyond the training data" in seen[-1][1]
    assert "T^2 500 > 100 (largest in training) at atom 0, d_min 2 > 1 (largest held out) at atom 1" in seen[-1][1]
    # close_contact ignore: no contact report, so the out-of-domain check speaks
    seen.clear()
    SafetyPolicy(limits, close_contact="ignore", report=lambda *a: seen.append(a)).observe(both, lambda: atoms)
    assert [kind for kind, _ in seen] == ["out_of_domain"]
    seen.clear()
    SafetyPolicy(limits, close_contact="ignore", ood_warnings=False,
                 report=lambda *a: seen.append(a)).observe(both, lambda: atoms)
    assert seen == []
    with pytest.raises(ValueError, match="close_contact must be one of warn, halt, dump, ignore"):
        SafetyPolicy(limits, close_contact="explode")


# ------------------------------------------------------------------ ASE calculator, shipped model
def test_ase_isolated_atom_warns_once_then_rate_limited():
    calc = MLIPCalculator()
    caught = evaluate(calc, isolated_atom(), 12)
    assert of(caught, CloseContactWarning) == []
    messages = of(caught, OutOfDomainWarning)
    assert messages[0] == out_of_domain_message(0, 1, (calc.results["mahalanobis"][0], T2_MAX, 0),
                                                (calc.results["d_min"][0], D_MIN_MAX, 0))
    assert "Mahalanobis T^2 8400 > 4535" in messages[0] and "d_min 1.358 > 1.208" in messages[0]
    assert len(messages) == 2 and messages[1].startswith("mlip_md out of domain on step 10:")
    assert "10 step(s) with atoms out of domain (10 atom(s) in all) since the message on step 0" in messages[1]
    assert of(evaluate(MLIPCalculator(ood_warnings=False), isolated_atom(), 3), ExtrapolationWarning) == []


def test_ase_squeezed_pair_warns_once_and_halts():
    calc = MLIPCalculator()
    caught = evaluate(calc, squeezed_pair(), 5)
    assert of(caught, OutOfDomainWarning) == []  # the contact's message stands for both
    (message,) = of(caught, CloseContactWarning)
    assert message == close_contact_message(0, 0, 1, 0.05, 0.05 / PAIR_MIN, "Cu-Cu", PAIR_MIN, 2)
    assert calc.results["close_contact"][[0, 1]].tolist() == [1, 1]
    for action in ("halt", "raise"):
        calc = MLIPCalculator(close_contact=action)
        for _ in range(2):  # every call with the contact stops, not only the first
            with pytest.raises(CloseContactHalt, match=r"atoms 0 and 1 are 0.050 A apart.*Stopping \(close_contact halt\)"):
                calc.calculate(squeezed_pair(), ["energy"], all_changes)
    assert issubclass(CloseContactHalt, InvalidStructureError)
    quiet = evaluate(MLIPCalculator(close_contact="ignore", ood_warnings=False), squeezed_pair(), 2)
    assert of(quiet, (CloseContactWarning, ExtrapolationWarning)) == []


def test_ase_dump_appends_the_frame(tmp_path):
    path = tmp_path / "contacts.extxyz"
    calc = MLIPCalculator(close_contact="dump", dump_path=path)
    caught = evaluate(calc, squeezed_pair(), 3)  # one message and one frame (the repeats are rate-limited)
    (message,) = of(caught, CloseContactWarning)
    assert message.endswith(f"; frame appended to {path}")
    (frame,) = read(path, ":")
    assert len(frame) == 108 and frame.info["signal"] == "min_distance_ratio" and frame.info["step"] == 0
    assert frame.arrays["min_distance_ratio"][0] == pytest.approx(0.05 / PAIR_MIN, rel=1e-6)
    np.testing.assert_allclose(frame.positions, squeezed_pair().positions, atol=1e-8)
