"""Active learning pieces: config errors, oracle failures, the label step's bookkeeping, and
each query strategy on a constructed pool where the right choice is known."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mlip_md.active.config import ConfigError, config_from_dict, load_config
from mlip_md.active.explore import Candidate
from mlip_md.active.oracle import Oracle
from mlip_md.active.strategies import (
    AdversarialStrategy,
    DOptimalStrategy,
    EnsembleObjective,
    MaxVarianceStrategy,
    RandomStrategy,
    SelectionContext,
    VarianceDOptimalStrategy,
    attack,
    get_strategy,
    logdet_gain,
)


def cand(features, force_sigma=0.1, origin=""):
    features = np.atleast_2d(np.asarray(features, dtype=float))
    n = features.shape[0]
    return Candidate(atoms=bulk("Cu"), features=features, t2=np.full(n, 2.0), t2_threshold=np.ones(n),
                     energy_sigma=np.full(n, 0.01), force_sigma=np.full(n, force_sigma), origin=origin)


def ctx(**kw):
    return SelectionContext(rng=np.random.default_rng(0), **kw)


# ------------------------------------------------------------------------------ config
def test_config_names_the_bad_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[query]\nstrategy = 'max-variance'\nbatchsize = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize' in \[query\]"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"\[stop\] max_labels: expected an integer"):
        config_from_dict({"stop": {"max_labels": "ten"}})
    with pytest.raises(ConfigError, match=r"\[query\] strategy: unknown strategy 'greedy'"):
        config_from_dict({"query": {"strategy": "greedy"}})
    with pytest.raises(ConfigError, match=r"unknown section \[explor\]"):
        config_from_dict({"explor": {}})
    with pytest.raises(ConfigError, match=r"\[explore\] schedule\[0\] temprature_K|unknown key 'temprature_K'"):
        config_from_dict({"explore": {"schedule": [{"temprature_K": 300, "steps": 5}]}})
    with pytest.raises(ConfigError, match=r"\[explore\] engine"):
        config_from_dict({"explore": {"engine": "gromacs"}})
    path.write_text("[query\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_config_defaults_and_paths(tmp_path):
    cfg = config_from_dict({"run": {"directory": "out"}, "explore": {"schedule": [
        {"temperature_K": 500, "steps": 10, "pressure_GPa": 1}]}}, base_dir=tmp_path)
    assert cfg.directory == (tmp_path / "out").resolve()
    assert cfg.explore.schedule[0].pressure_GPa == 1.0 and cfg.query.strategy == "max-variance"


def test_extra_exploration_structures_and_the_fixed_benchmark_test_structures():
    from mlip_md.active.benchmark import TEST_STRUCTURES, benchmark_system, run_config
    from mlip_md.active.systems import start_structures

    starts = start_structures(benchmark_system(["divacancy", "surface110"]))
    assert list(starts)[:4] == list(TEST_STRUCTURES)
    bulk32, divacancy = starts["bulk"], starts["divacancy"]
    assert len(divacancy) == len(bulk32) - 2
    # the two missing sites are nearest neighbours: a / sqrt(2) = 2.546 Å apart
    missing = [p for p in bulk32.positions if np.linalg.norm(divacancy.positions - p, axis=1).min() > 1e-6]
    d = bulk32.copy()
    d.positions[:2] = missing
    assert len(missing) == 2 and d.get_distance(0, 1, mic=True) == pytest.approx(3.6 / math.sqrt(2))
    assert starts["surface110"].pbc.all() and starts["surface110"].info["structure"] == "surface110"
    assert list(start_structures(benchmark_system())) == list(TEST_STRUCTURES)  # the test set's structures
    cfg = run_config(Path("."), "random", 0, 0.1, 48, 30, 4, ["divacancy"], [300.0, 900.0])
    assert [s.temperature_K for s in cfg.explore.schedule] == [300.0, 900.0]
    assert cfg.explore.schedule[0].steps == 30 and cfg.system.structures[-1] == "divacancy"
    with pytest.raises(ConfigError, match=r"\[system\] structures: unknown structure 'surface211'"):
        config_from_dict({"system": {"structures": ["surface211"]}})


# ------------------------------------------------------------------------------ oracle
class Flaky(Calculator):
    """EMT that fails in a chosen way on its first calls."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, mode, failures=1):
        super().__init__()
        self.mode, self.failures, self.emt = mode, failures, EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = atoms.copy()
        a.calc = self.emt
        self.results = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "stress": a.get_stress()}
        self.converged = True
        if Flaky.calls[self.mode] < self.failures:
            Flaky.calls[self.mode] += 1
            if self.mode == "raise":
                raise RuntimeError("reference crashed")
            if self.mode == "nan":
                self.results["energy"] = float("nan")
            if self.mode == "scf":
                self.converged = False


@pytest.mark.parametrize("mode,message", [("raise", "RuntimeError: reference crashed"),
                                          ("nan", "non-finite"), ("scf", "SCF not converged")])
def test_oracle_failures_are_results_not_crashes(mode, message):
    Flaky.calls = {"raise": 0, "nan": 0, "scf": 0}
    oracle = Oracle(lambda: Flaky(mode))
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    bad = oracle.label(atoms)
    assert not bad.ok and message in bad.error and bad.atoms is None
    good = oracle.label(atoms)
    assert good.ok
    ref = atoms.copy()
    ref.calc = EMT()
    assert good.atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy())
    np.testing.assert_allclose(good.atoms.get_forces(), ref.get_forces())


def test_label_step_records_failures_and_retries_later(tmp_path):
    from mlip_md.active.loop import ActiveLoop

    Flaky.calls = {"raise": 0, "nan": 0, "scf": 0}
    cfg = config_from_dict({"run": {"directory": "run"}, "oracle": {"max_attempts": 2},
                            "test": {"temperatures_K": [300.0], "snapshots": 1, "md_steps": 2}}, base_dir=tmp_path)
    oracle = Oracle(lambda: Flaky("raise", failures=1), log=tmp_path / "run" / "calls.log")
    loop = ActiveLoop(cfg, bars=False, log=lambda s: None, oracle=oracle)
    frames = [bulk("Cu", cubic=True) for _ in range(3)]
    for k, a in enumerate(frames):
        a.rattle(0.05, seed=k)
    ids = loop.store.add_pending({"atoms": a, "kind": "train", "iteration": 0, "strategy": "initial"} for a in frames)
    assert loop.label("train", 0) == {"done": 2, "failed": 1}
    failed = loop.store.rows(status="failed")
    assert [r.id for r in failed] == [ids[0]] and "reference crashed" in failed[0].error
    assert loop.label("train", 0) == {"done": 0, "failed": 0}  # same iteration: no retry, no repeat
    assert loop.label("train", 1) == {"done": 1, "failed": 0}  # kept and retried later
    rows = loop.store.rows(kind="train")
    assert [r.status for r in rows] == ["done"] * 3 and [r.attempts for r in rows] == [2, 1, 1]
    assert len(loop.store.labelled("train")) == 3


# ------------------------------------------------------------------------------ strategies
def test_random_is_seeded_and_skips_duplicates():
    pool = [cand([[float(k), 0.0]]) for k in range(6)] + [cand([[0.0, 0.0]])] * 4
    a = RandomStrategy().select(pool, 3, ctx(dedupe_distance=1e-6))
    b = RandomStrategy().select(pool, 3, ctx(dedupe_distance=1e-6))
    assert [id(c) for c in a] == [id(c) for c in b] and len(a) == 3
    chosen = RandomStrategy().select(pool, 10, ctx(dedupe_distance=1e-6))
    assert len(chosen) == 6  # the four copies of [0, 0] count once


def test_max_variance_picks_largest_and_dedupes():
    pool = [cand([[k, 0.0]], force_sigma=0.1 * k) for k in range(5)]
    pool.append(cand([[4.0, 0.0]], force_sigma=0.45))  # a near-copy of the best one
    chosen = MaxVarianceStrategy().select(pool, 3, ctx(dedupe_distance=1e-3))
    assert [c.score for c in chosen] == pytest.approx([0.45, 0.3, 0.2])
    assert all(c is not pool[4] for c in chosen)


def test_d_optimal_picks_the_spanning_set():
    e = np.eye(3)
    pool = [cand(1.2 * e[:1]), cand(1.1 * e[:1]), cand(1.0 * e[:1]),  # large, but all along x
            cand(0.5 * e[1:2]), cand(0.5 * e[2:3])]
    chosen = DOptimalStrategy().select(pool, 3, ctx(dedupe_distance=0.0))
    assert {id(c) for c in chosen} == {id(pool[0]), id(pool[3]), id(pool[4])}
    # max-variance (magnitude) would take the three x-copies instead
    for c, s in zip(pool, [1.2, 1.1, 1.0, 0.5, 0.5]):
        c.force_sigma = np.array([s])
    assert {id(c) for c in MaxVarianceStrategy().select(pool, 3, ctx(dedupe_distance=0.0))} == {
        id(pool[0]), id(pool[1]), id(pool[2])}
    # training data already spanning x and y: the first pick is the z direction
    first = DOptimalStrategy().select(pool, 1, ctx(dedupe_distance=0.0, training_features=5 * e[:2]))
    assert first[0] is pool[4]


def test_variance_d_optimal_picks_uncertain_and_new_directions():
    e = np.eye(4)
    training = 5 * e[:1]  # the data span x only
    pool = [cand(e[1:2], force_sigma=1.0, origin="uncertain y"),
            cand([[0.0, 0.95, 0.1, 0.0]], force_sigma=1.0, origin="uncertain y, again"),
            cand(e[2:3], force_sigma=0.8, origin="uncertain z"),
            cand(1.2 * e[3:4], force_sigma=0.05, origin="new w, already predicted well")]
    c = ctx(dedupe_distance=1e-3, training_features=training)
    chosen = VarianceDOptimalStrategy().select(pool, 2, c)
    assert [x.origin for x in chosen] == ["uncertain y", "uncertain z"]
    gain = logdet_gain(1e-3 * np.eye(4) + training.T @ training, pool[0].features)
    assert chosen[0].score == pytest.approx(gain * 1.0)
    # d-optimal alone takes the new but well-predicted w first; max-variance takes y twice
    assert DOptimalStrategy().select(pool, 1, c)[0].origin == "new w, already predicted well"
    assert [x.origin for x in MaxVarianceStrategy().select(pool, 2, c)] == ["uncertain y", "uncertain y, again"]
    assert isinstance(get_strategy("variance-d-optimal"), VarianceDOptimalStrategy)
    assert VarianceDOptimalStrategy().select(pool, 10, c)[-1].origin == "new w, already predicted well"


def test_logdet_gain_is_the_determinant_lemma():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(20, 4))
    a = m.T @ m + 0.1 * np.eye(4)
    x = rng.normal(size=(3, 4))
    expected = np.linalg.slogdet(np.eye(3) + x @ np.linalg.solve(a, x.T))[1]
    assert logdet_gain(a, x) == pytest.approx(expected, rel=1e-12)


def test_adversarial_attack_finds_the_boltzmann_weighted_maximum():
    """Toy: E = k/2 |x - a|^2, variance = exp(-|x - b|^2 / 2w^2): the maximum of
    log var - E/kT is x* = (b/w^2 + a k/kT) / (1/w^2 + k/kT)."""
    from ase import Atoms, units

    a, b, w, k, temperature = np.zeros(3), np.array([1.0, 0.5, 0.0]), 0.5, 2.0, 3000.0
    kt = units.kB * temperature

    def objective(pos, atoms):
        x = pos[0]
        energy = 0.5 * k * ((x - torch.as_tensor(a)) ** 2).sum()
        variance = torch.exp(-((x - torch.as_tensor(b)) ** 2).sum() / (2 * w * w))
        return energy, variance

    atoms = Atoms("Cu", positions=[a], cell=[10, 10, 10], pbc=True)
    out, info = attack(atoms, objective, temperature, steps=400, step_size=0.005)
    expected = (b / w**2 + a * k / kt) / (1 / w**2 + k / kt)
    np.testing.assert_allclose(out.positions[0], expected, atol=0.01)
    assert info["objective"] > info["objective_start"] and info["variance"] > info["variance_start"]
    # a colder penalty keeps the attack closer to the energy minimum
    cold, _ = attack(atoms, objective, 300.0, steps=400, step_size=0.005)
    assert np.linalg.norm(cold.positions[0] - a) < 0.5 * np.linalg.norm(out.positions[0] - a)


def test_adversarial_raises_ensemble_variance_of_a_real_model(trained_model_path):
    from mlip_md.active.explore import Scorer
    from mlip_md.model.io import load_potential
    from mlip_md.runtime.factory import load_model

    model = load_model(trained_model_path)
    scorer = Scorer(model, 0.999, "chi2")
    start = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    start.rattle(0.05, seed=2)
    pool = [scorer.candidate(start, "seed")]
    context = ctx(scorer=scorer, objective=EnsembleObjective(load_potential(trained_model_path)),
                  adversarial_steps=10, adversarial_step_size=0.03, adversarial_temperature_K=1500.0)
    (result,) = AdversarialStrategy().select(pool, 1, context)
    assert result.origin == "seed +adversarial"
    total = lambda c: float((c.energy_sigma ** 2).sum())  # noqa: E731
    assert total(result) > 1.5 * total(pool[0])
    moved = np.linalg.norm(result.atoms.positions - start.positions, axis=1).max()
    assert 0.0 < moved <= 10 * 0.03 + 1e-9 and math.isfinite(result.score)
