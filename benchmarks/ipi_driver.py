"""i-PI + mlip_md driver versus i-PI + ``i-pi-driver-py`` (i-PI's ASE driver serving the same
model through MLIPCalculator), side by side in one run, NVE Cu at N = 500, 4000, 32000.

Reports steps/s of each pair (timed by i-PI's own per-step wall clock, which excludes i-PI's
start-up and shutdown), the ratio, and the share of the mlip_md driver's step time spent outside
the model call (from the driver's last log line: the steady state after its first step, which
builds the neighbour list from scratch and warms the model up). Both drivers do the same work (energy, forces, virial; the ASE side runs
``MLIPCalculator(monitors=False)``, mlip_md ``--monitor-every 0``); one more column has mlip_md
with its default monitors (sigma, T², d_min, contacts) on every step. A zero-force model served by
mlip_md versus ``i-pi-driver-py -m dummy`` gives the pure protocol overhead.

    python benchmarks/ipi_driver.py [--sizes 500 4000 32000] [--steps 20] [--output table.md]
                                    [--compiled m.pt2] [--no-extras]

--compiled adds mlip_md serving the compiled package of the same model (`mlip-md ipi --model m.pt
--compiled m.pt2`, Verlet skin 0.5 Å, the driver's default) next to the TorchScript runs;
--no-extras skips the monitors and zero-model columns.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import torch
from ase.build import bulk

from mlip_md.engines.ipi.server import IPIServer, write_ipi_xyz
from mlip_md.model.io import METADATA_NAME, build_metadata, default_model_path, load_potential

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}

XML = """<simulation verbosity='low' safe_stride='100000'>
  <output prefix='b'> <properties stride='1' filename='out'> [ step, time{{picosecond}} ] </properties> </output>
  <total_steps> {steps} </total_steps>
  <prng> <seed> 1 </seed> </prng>
  <ffsocket name='f' mode='unix'> <address> {address} </address> <latency> 1e-5 </latency> </ffsocket>
  <system>
    <initialize nbeads='1'> <file mode='xyz' units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities> </initialize>
    <forces> <force forcefield='f'> </force> </forces>
    <motion mode='dynamics'> <dynamics mode='nve'> <timestep units='femtosecond'> 1.0 </timestep> </dynamics> </motion>
  </system>
</simulation>"""


class ZeroPotential(torch.nn.Module):
    """Contract-shaped model that returns zero energies and forces (protocol overhead). It has no
    descriptor, so its file has no descriptor block (the block promises an evaluate_features for
    a host that runs the descriptor itself) and no repulsion or architecture of the built-in model."""

    @torch.jit.export
    def evaluate(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                 n_local: int, compute_monitors: bool, compute_force_sigma: bool) -> Dict[str, torch.Tensor]:
        zeros = torch.zeros(n_local, dtype=edge_vectors.dtype)
        out = {"atomic_energy": zeros, "energy": zeros.sum(), "edge_grad": torch.zeros_like(edge_vectors),
               "energy_members": zeros.unsqueeze(0)}
        if compute_monitors:
            out["energy_sigma"] = zeros
            out["mahalanobis"] = zeros
            out["min_distance"] = zeros + 10.0
            out["min_distance_ratio"] = zeros + 10.0
        return out

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                n_local: int) -> Dict[str, torch.Tensor]:
        return self.evaluate(species, edge_index, edge_vectors, n_local, True, False)


def zero_model(path: Path) -> Path:
    """The zero model as a model file: the shipped model's elements and units, one member, a 1 Å
    cutoff (no edges in a Cu crystal), none of the built-in model's blocks."""
    meta = build_metadata(load_potential(default_model_path()), "float64")
    for block in ("descriptor", "repulsion", "n_features", "model_config"):
        del meta[block]
    meta.update(ensemble_size=1, cutoff=1.0, architecture="zero")
    torch.jit.save(torch.jit.script(ZeroPotential()), str(path), _extra_files={METADATA_NAME: json.dumps(meta)})
    return path


def crystal(n_target: int):
    cells = max(1, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(cells)
    atoms.rattle(0.02, seed=0)
    return atoms


def run_pair(workdir: Path, atoms, steps: int, driver_cmd) -> Dict[str, float]:
    """Time ``steps`` MD steps of i-PI with the given driver command; returns steps/s measured
    between the 2nd and the last step (the properties file gets one line per step)."""
    address = f"bench_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    workdir.mkdir(parents=True, exist_ok=True)
    write_ipi_xyz(workdir / "init.xyz", atoms)
    atoms.write(workdir / "template.extxyz")  # for i-PI's ASE driver: ASE does not read i-PI's xyz cell line
    (workdir / "input.xml").write_text(XML.format(steps=steps, address=address))
    out = workdir / "b.out"
    with IPIServer(workdir, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        driver = subprocess.Popen([c.format(address=address, workdir=workdir) for c in driver_cmd], cwd=workdir,
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stamps = []
        seen = 0
        while server.process.poll() is None:
            if driver.poll() is not None and driver.returncode != 0:
                raise RuntimeError(f"driver {driver_cmd[0]} failed:\n{driver.communicate()[0]}")
            if out.exists():
                lines = [l for l in out.read_text().splitlines() if l.strip() and not l.startswith("#")]
                now = time.perf_counter()
                stamps.extend([now] * (len(lines) - seen))
                seen = len(lines)
            time.sleep(0.002)
        driver_output = driver.communicate(timeout=120)[0]
    if len(stamps) < 3:
        raise RuntimeError(f"too few steps recorded; driver said:\n{driver_output}")
    return {"steps_per_second": (len(stamps) - 2) / (stamps[-1] - stamps[1]), "log": driver_output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000, 32000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--output")
    parser.add_argument("--compiled", help="compiled package of --model (mlip-md compile)")
    parser.add_argument("--no-extras", action="store_true", help="skip the monitors and zero-model runs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlip_md_ipi_bench_"))
    zero = zero_model(root / "zero.pt")
    mlip = [str(Path(sys.prefix) / "bin" / "mlip-md"), "ipi", "--unix", "--address", "{address}"]
    baseline = ["i-pi-driver-py", "-u", "-a", "{address}", "-m", "custom", "-P", str(HERE / "ipi_ase_pes.py"),
                "-o", "template={workdir}/template.extxyz,model=" + args.model]
    rows = []
    for n_target in args.sizes:
        atoms = crystal(n_target)
        n = len(atoms)
        steps = max(5, args.steps if n < 20000 else args.steps // 2)
        plain = ["--committee", "off", "--monitor-every", "0"]
        ours = run_pair(root / f"ours_{n}", atoms, steps, mlip + ["--model", args.model] + plain)
        theirs = run_pair(root / f"ase_{n}", atoms, steps, baseline)
        # the ASE driver with MLIPCalculator evaluating the TorchScript model (no fused kernel)
        theirs_ts = run_pair(root / f"ase_ts_{n}", atoms, steps, baseline[:-1] + [baseline[-1] + ",fused=false"])
        outside = float(ours["log"].split("% of it outside the model")[0].split()[-1])
        row = {"n": n, "ours": ours["steps_per_second"], "ase": theirs["steps_per_second"], "outside": outside,
               "ase_ts": theirs_ts["steps_per_second"]}
        if args.compiled:
            comp = run_pair(root / f"pt2_{n}", atoms, steps,
                            mlip + ["--model", args.model, "--compiled", args.compiled] + plain)
            row["compiled"] = comp["steps_per_second"]
            row["compiled_outside"] = float(comp["log"].split("% of it outside the model")[0].split()[-1])
        if not args.no_extras:
            row["monitored"] = run_pair(root / f"mon_{n}", atoms, steps,
                                        mlip + ["--model", args.model, "--committee", "off"])["steps_per_second"]
            row["zero"] = run_pair(root / f"zero_{n}", atoms, steps * 5,
                                   mlip + ["--model", str(zero)] + plain)["steps_per_second"]
            row["dummy"] = run_pair(root / f"dummy_{n}", atoms, steps * 5,
                                    ["i-pi-driver-py", "-u", "-a", "{address}", "-m", "dummy"])["steps_per_second"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    lines = ["| N atoms | i-PI + mlip-md ipi (steps/s) | i-PI + i-pi-driver-py ASE (steps/s) | ratio | "
             "i-pi-driver-py ASE, TorchScript calculator (steps/s) | ratio to it | "
             "driver time outside the model | mlip-md ipi --compiled (steps/s) | compiled / ASE driver | "
             "compiled: outside the model | mlip-md ipi + monitors every step (steps/s) | "
             "zero model, mlip-md ipi (steps/s) | i-pi-driver-py -m dummy (steps/s) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"**{r['compiled'] / r['ase']:.2f}x**" if "compiled" in r else "-"
        outside_c = f"{r['compiled_outside']:.1f}%" if "compiled" in r else "-"
        lines.append(f"| {r['n']} | {r['ours']:.2f} | {r['ase']:.2f} | {r['ours'] / r['ase']:.2f} | "
                     f"{r['ase_ts']:.2f} | {r['ours'] / r['ase_ts']:.2f} | {r['outside']:.1f}% | "
                     f"{cell(r, 'compiled', '.2f')} | {ratio} | {outside_c} | {cell(r, 'monitored', '.2f')} | "
                     f"{cell(r, 'zero', '.1f')} | {cell(r, 'dummy', '.1f')} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
