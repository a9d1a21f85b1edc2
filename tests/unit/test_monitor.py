"""Monitor policy: rules, hysteresis, cooldown, and every action."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from mlip_md.runtime.monitors import ExtrapolationHalt, ExtrapolationWarning, MonitorPolicy, Rule, default_policy
from mlip_md.runtime.predictor import Prediction


def prediction(sigma_max=0.01, t2=10.0, ratio=1.2, n=4, force_sigma=None):
    sigma = np.full(n, 0.001)
    sigma[1] = sigma_max
    return Prediction(
        energy=-1.0, energies=np.full(n, -0.25), forces=np.zeros((n, 3)), virial=np.zeros((3, 3)), stress=None,
        energy_members=np.zeros((2, n)), energy_uncertainty=0.002, energy_sigma=sigma,
        mahalanobis=np.array([1.0, t2, 2.0, 3.0])[:n], min_distance=np.full(n, 2.5),
        min_distance_ratio=np.array([ratio, 1.5, 1.5, 1.5])[:n], force_sigma=force_sigma,
    )


@pytest.fixture()
def atoms():
    return bulk("Cu", "fcc", a=3.6, cubic=True)


def test_rule_validation():
    with pytest.raises(ValueError, match="unknown monitor signal"):
        Rule("sigma", 1.0)
    with pytest.raises(ValueError, match="unknown monitor action"):
        Rule("energy_sigma", 1.0, ("explode",))
    with pytest.raises(ValueError, match="give dump_path"):
        MonitorPolicy([Rule("energy_sigma", 1.0, "dump")])
    with pytest.raises(ValueError, match="give callback"):
        MonitorPolicy([Rule("energy_sigma", 1.0, "callback")])


def test_warn_names_signal_atoms_and_threshold(atoms):
    policy = MonitorPolicy([Rule("energy_sigma", 0.005, "warn")])
    with pytest.warns(ExtrapolationWarning, match=r"energy_sigma = 0.01 above threshold 0.005 \(atoms \[1\]\)"):
        events = policy.observe(atoms, prediction())
    assert len(events) == 1 and events[0].atoms.tolist() == [1]
    assert policy.observe(atoms, prediction(sigma_max=0.002)) == []


def test_hysteresis_rearms_only_below_lowered_threshold(atoms):
    policy = MonitorPolicy([Rule("mahalanobis", 100.0, ())], hysteresis=0.2)
    assert len(policy.observe(atoms, prediction(t2=150))) == 1
    assert policy.observe(atoms, prediction(t2=150)) == []  # still above: no repeat
    assert policy.observe(atoms, prediction(t2=90)) == []  # below threshold but not below 80: not re-armed
    assert policy.observe(atoms, prediction(t2=150)) == []
    assert policy.observe(atoms, prediction(t2=70)) == []  # re-arms
    assert len(policy.observe(atoms, prediction(t2=150))) == 1


def test_cooldown(atoms):
    policy = MonitorPolicy([Rule("mahalanobis", 100.0, ())], hysteresis=0.0, cooldown=3)
    fired = [len(policy.observe(atoms, prediction(t2=150 if k % 2 == 0 else 50))) for k in range(10)]
    # fires at 0, re-arms at 1, quiet through step 3, fires at 4, quiet to 7, fires at 8
    assert fired == [1, 0, 0, 0, 1, 0, 0, 0, 1, 0]


def test_lower_bound_signal_close_contacts(atoms):
    policy = MonitorPolicy([Rule("min_distance_ratio", 1.0, ())])
    events = policy.observe(atoms, prediction(ratio=0.8))
    assert events[0].value == pytest.approx(0.8) and events[0].atoms.tolist() == [0]
    assert "below threshold" in events[0].describe()


def test_dump_and_label_append_frames_with_arrays(tmp_path, atoms):
    policy = MonitorPolicy([Rule("energy_sigma", 0.005, ("dump", "label"))], dump_path=tmp_path / "d.extxyz",
                           label_path=tmp_path / "l.extxyz", hysteresis=0.0)
    for k in range(3):
        policy.observe(atoms, prediction(sigma_max=0.01 if k != 1 else 0.001, force_sigma=np.ones((4, 3)) * 0.1))
    frames = read(tmp_path / "d.extxyz", ":")
    assert len(frames) == 2 and len(read(tmp_path / "l.extxyz", ":")) == 2
    frame = frames[1]
    assert frame.info["step"] == 2 and frame.info["signal"] == "energy_sigma"
    np.testing.assert_allclose(frame.arrays["energy_sigma"], prediction().energy_sigma)
    assert frame.arrays["force_sigma"].shape == (4, 3)
    assert frame.get_potential_energy() == pytest.approx(-1.0)


def test_halt_raises_after_other_actions(tmp_path, atoms):
    seen = []
    policy = MonitorPolicy([Rule("mahalanobis", 5.0, ("callback", "halt"))], callback=lambda *a: seen.append(a))
    with pytest.raises(ExtrapolationHalt, match="mahalanobis = 10"):
        policy.observe(atoms, prediction())
    assert len(seen) == 1 and seen[0][0].signal == "mahalanobis"


def test_signal_absent_is_ignored(atoms):
    policy = MonitorPolicy([Rule("force_sigma", 0.01, "halt")])
    assert policy.observe(atoms, prediction()) == []  # no force_sigma computed
    with pytest.raises(ExtrapolationHalt):
        policy.observe(atoms, prediction(force_sigma=np.full((4, 3), 0.5)))


def test_calculator_hands_every_prediction_to_the_policy(tmp_path, random_potential):
    from mlip_md import MLIPCalculator
    from mlip_md.model.io import save_model

    path = save_model(random_potential, tmp_path / "m.pt")
    calc = MLIPCalculator(path)
    policy = default_policy(calc.model, actions=("dump",), dump_path=tmp_path / "flagged.extxyz")
    calc.monitor = policy
    crystal = bulk("Cu", "fcc", a=3.6).repeat(3)
    crystal.calc = calc
    crystal.get_potential_energy()
    assert policy.events == []
    squeezed = crystal.copy()
    squeezed.positions[1] = squeezed.positions[0] + [1.2, 0, 0]
    squeezed.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        squeezed.get_potential_energy()
    assert [e.signal for e in policy.events][:1] == ["min_distance_ratio"]
    assert len(read(tmp_path / "flagged.extxyz", ":")) >= 1


def test_near_duplicates_are_not_dumped_twice(tmp_path, atoms):
    policy = MonitorPolicy([Rule("energy_sigma", 0.005, "dump")], dump_path=tmp_path / "d.extxyz",
                           hysteresis=0.0, dedupe_distance=0.1)
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 20))
    for k, shift in enumerate([0.0, 0.01, 0.02, 1.0, 1.01]):  # two distinct environments
        pred = prediction()
        pred.features = base + shift
        policy.observe(atoms, pred)
        policy.observe(atoms, prediction(sigma_max=0.001))  # re-arm between frames
    assert len(read(tmp_path / "d.extxyz", ":")) == 2
    assert policy.suppressed == 3
