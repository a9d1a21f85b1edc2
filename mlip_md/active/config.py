"""Configuration of an active-learning run: a TOML file read with :mod:`tomllib` into
dataclasses. Unknown keys and values of the wrong type raise :class:`ConfigError` naming the
key (``[section] key``) and what is accepted.

Units: lengths Å, energies eV, forces eV/Å, temperatures K, pressures GPa, time steps fs.
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

STRATEGIES = ("random", "max-variance", "d-optimal", "adversarial", "variance-d-optimal")
STRUCTURES = ("bulk", "vacancy", "surface111", "surface100", "divacancy", "surface110")
ENGINES = ("ase", "lammps", "ipi")


class ConfigError(ValueError):
    """An invalid active-learning configuration (the message names the key)."""


@dataclasses.dataclass
class RunSection:
    directory: str = "active_run"  # store, models and state; relative to the config file
    seed: int = 0
    device: str = "cpu"


@dataclasses.dataclass
class SystemSection:
    element: str = "Cu"
    a: float = 0.0  # fcc lattice constant, Å; 0 -> ase.data reference value
    structures: List[str] = dataclasses.field(default_factory=lambda: list(STRUCTURES[:4]))
    supercell: int = 2  # cubic fcc cell repeats for bulk/vacancy (2 -> 32 atoms)
    slab_size: List[int] = dataclasses.field(default_factory=lambda: [2, 2, 4])  # surface slabs
    vacuum: float = 6.0  # Å on each side of a slab


@dataclasses.dataclass
class OracleSection:
    spec: str = "emt"  # reference SPEC (see mlip_md.reference)
    max_attempts: int = 3  # failed oracle calls on one configuration before it is given up


@dataclasses.dataclass
class InitialSection:
    n: int = 4  # labelled structures before the first model
    rattle: float = 0.05  # Å, Gaussian displacement std
    strain: float = 0.01  # max |strain component|


@dataclasses.dataclass
class ModelSection:
    cutoff: float = 4.5
    switch_width: float = 1.0
    n_max: int = 4
    l_max: int = 2
    hidden: List[int] = dataclasses.field(default_factory=lambda: [16, 16])
    ensemble_size: int = 3


@dataclasses.dataclass
class TrainSection:
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 5e-3
    patience: int = 15
    val_fraction: float = 0.1
    warm_start: bool = True
    dtype: str = "float32"


@dataclasses.dataclass
class Stage:
    """One stage of the exploration schedule."""

    temperature_K: float = 300.0
    steps: int = 50
    pressure_GPa: Optional[float] = None  # None: NVT (Langevin); a value: NPT (Berendsen)


@dataclasses.dataclass
class ExploreSection:
    engine: str = "ase"
    timestep_fs: float = 2.0
    friction: float = 0.02  # Langevin friction, 1/fs
    sample_every: int = 5  # MD steps between checks of the trigger
    schedule: List[Stage] = dataclasses.field(
        default_factory=lambda: [Stage(300.0, 40), Stage(900.0, 40), Stage(1500.0, 40)])
    abort_ratio: float = 50.0  # T^2 / threshold beyond which a trajectory restarts from its start
    min_distance_ratio: float = 0.6  # restart when atoms get closer than this x the training minimum


@dataclasses.dataclass
class TriggerSection:
    mahalanobis_quantile: float = 0.999  # chi^2 quantile of the T^2 threshold
    threshold: str = "chi2"  # "chi2" or "empirical" (training-set quantile)
    energy_sigma: float = 0.0  # eV per atom; > 0 also triggers on the calibrated ensemble sigma
    force_sigma: float = 0.0  # eV/Å; > 0 also triggers on the ensemble force std


@dataclasses.dataclass
class QuerySection:
    strategy: str = "max-variance"
    batch_size: int = 4
    dedupe_distance: float = 0.02  # fingerprint RMS distance (standardised descriptor units)
    variance: str = "force"  # max-variance: "force" or "energy"
    adversarial_temperature_K: float = 1500.0  # Boltzmann penalty exp(-E / kT) of the attack
    adversarial_steps: int = 10
    adversarial_step_size: float = 0.02  # Å, largest atom displacement per ascent step


@dataclasses.dataclass
class TestSection:
    file: str = ""  # labelled extxyz; empty -> sampled by MD with the oracle itself
    temperatures_K: List[float] = dataclasses.field(default_factory=lambda: [300.0, 900.0, 1500.0])
    snapshots: int = 2  # per structure and temperature
    md_steps: int = 40  # oracle MD steps between snapshots


@dataclasses.dataclass
class StopSection:
    target_force_rmse: float = 0.0  # eV/Å on the test set; 0 disables
    max_labels: int = 100  # training labels (initial set included)
    max_iterations: int = 20


@dataclasses.dataclass
class ActiveConfig:
    run: RunSection = dataclasses.field(default_factory=RunSection)
    system: SystemSection = dataclasses.field(default_factory=SystemSection)
    oracle: OracleSection = dataclasses.field(default_factory=OracleSection)
    initial: InitialSection = dataclasses.field(default_factory=InitialSection)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    explore: ExploreSection = dataclasses.field(default_factory=ExploreSection)
    trigger: TriggerSection = dataclasses.field(default_factory=TriggerSection)
    query: QuerySection = dataclasses.field(default_factory=QuerySection)
    test: TestSection = dataclasses.field(default_factory=TestSection)
    stop: StopSection = dataclasses.field(default_factory=StopSection)
    base_dir: Path = Path(".")  # directory of the config file (not a TOML key)

    @property
    def directory(self) -> Path:
        return (self.base_dir / self.run.directory).resolve()

    def resolve(self, path: str) -> Path:
        return (self.base_dir / path).resolve()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("base_dir")
        return d

    def validate(self) -> "ActiveConfig":
        def need(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{key}: {message}")

        need(self.query.strategy in STRATEGIES, "[query] strategy",
             f"unknown strategy {self.query.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        for s in self.system.structures:
            need(s in STRUCTURES, "[system] structures",
                 f"unknown structure {s!r}; choose from {', '.join(STRUCTURES)}")
        need(len(self.system.structures) > 0, "[system] structures", "give at least one structure")
        need(self.explore.engine in ENGINES, "[explore] engine",
             f"unknown engine {self.explore.engine!r}; use one of {', '.join(ENGINES)}")
        need(self.explore.engine != "ipi" or all(st.pressure_GPa is None for st in self.explore.schedule),
             "[explore] schedule", "the i-PI engine runs NVT: remove pressure_GPa or use engine 'ase' or 'lammps'")
        need(self.trigger.threshold in ("chi2", "empirical"), "[trigger] threshold", "use 'chi2' or 'empirical'")
        need(0.0 < self.trigger.mahalanobis_quantile < 1.0, "[trigger] mahalanobis_quantile", "must be in (0, 1)")
        need(self.query.variance in ("force", "energy"), "[query] variance", "use 'force' or 'energy'")
        need(self.query.batch_size >= 1, "[query] batch_size", "must be >= 1")
        need(self.initial.n >= 2, "[initial] n", "need at least 2 initial structures to train")
        need(self.model.ensemble_size >= 2, "[model] ensemble_size", "the uncertainty needs >= 2 members")
        need(self.train.dtype in ("float32", "float64"), "[train] dtype", "use 'float32' or 'float64'")
        need(self.explore.sample_every >= 1, "[explore] sample_every", "must be >= 1")
        need(len(self.explore.schedule) > 0, "[explore] schedule", "give at least one stage")
        need(self.oracle.max_attempts >= 1, "[oracle] max_attempts", "must be >= 1")
        need(self.stop.max_labels >= self.initial.n, "[stop] max_labels", "must be >= [initial] n")
        need(self.run.device in ("cpu", "cuda") or self.run.device.startswith("cuda:"), "[run] device",
             "use 'cpu' or 'cuda'")
        return self


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return None if value is None else _check_type(value, inner, key)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table like {{temperature_K = 300, steps = 50}}, got {value!r}")
        return _build(annotation, value, key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, data: Dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: {', '.join(sorted(fields))}")
        kwargs[key] = _check_type(value, hints[key], f"{where} {key}")
    return cls(**kwargs)


def config_from_dict(data: Dict[str, Any], base_dir: Path = Path(".")) -> ActiveConfig:
    hints = typing.get_type_hints(ActiveConfig)
    sections = {}
    known = [f.name for f in dataclasses.fields(ActiveConfig) if f.name != "base_dir"]
    for name, value in data.items():
        if name not in known:
            raise ConfigError(f"unknown section [{name}]; known sections: {', '.join(known)}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table (section), got {value!r}")
        sections[name] = _build(hints[name], value, f"[{name}]")
    return ActiveConfig(**sections, base_dir=Path(base_dir)).validate()


def load_config(path) -> ActiveConfig:
    """Read and validate a TOML config file; paths inside are relative to its directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return config_from_dict(data, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
