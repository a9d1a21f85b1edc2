"""mlip_md's i-PI driver against a real ``i-pi`` server (and, for failure modes, against a
scripted fake server built from the same wire codec)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from mlip_md import MLIPCalculator
from mlip_md.engines.ipi import wire
from mlip_md.engines.ipi.client import Driver, serve
from mlip_md.engines.ipi.connection import SocketClient
from mlip_md.engines.ipi.server import IPIServer, read_properties, write_ipi_xyz
from mlip_md.runtime.monitors import MonitorPolicy, Rule
from mlip_md.runtime.predictor import Predictor
from conftest import MLIP_MD  # noqa: E402
from md_programs import ENV, served_steps, start_ipi_driver, unique_address  # noqa: E402

ANGSTROM_PER_BOHR = 1.0 / wire.BOHR_PER_ANGSTROM


def crystal(repeat=3, vacancy=False, seed=0, rattle=0.05):
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(repeat)
    if vacancy:
        del atoms[0]
    atoms.rattle(rattle, seed=seed)
    return atoms


def simulation_xml(address, steps, dynamics="nve", temperature=900, stride=1, nbeads=1, forcefield=None,
                   extra_output="", thermostat=""):
    socket_ff = f"<ffsocket name='mlip_md' mode='unix'> <address> {address} </address> <latency> 1e-4 </latency> </ffsocket>"
    forcefield = forcefield.format(socket=socket_ff) if forcefield else socket_ff
    name = "committee" if "ffcommittee" in forcefield else "mlip_md"
    ensemble = "" if dynamics == "nve" else f"<ensemble> <temperature units='kelvin'> {temperature} </temperature> </ensemble>"
    return f"""<simulation verbosity='low' safe_stride='100000'>
  <output prefix='sim'>
    <properties stride='{stride}' filename='out'> [ step, time{{picosecond}}, conserved{{electronvolt}},
      temperature{{kelvin}}, potential{{electronvolt}}, virial_md{{atomic_unit}} ] </properties>
    <trajectory filename='pos' stride='{stride}' format='bin'> positions </trajectory>
    <trajectory filename='for' stride='{stride}' format='bin'> forces </trajectory>
    {extra_output}
  </output>
  <total_steps> {steps} </total_steps>
  <prng> <seed> 4242 </seed> </prng>
  {forcefield}
  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='xyz' units='angstrom'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> {temperature} </velocities>
    </initialize>
    <forces> <force forcefield='{name}'> </force> </forces>
    {ensemble}
    <motion mode='dynamics'>
      <dynamics mode='{dynamics}'> <timestep units='femtosecond'> 1.0 </timestep> {thermostat} </dynamics>
    </motion>
  </system>
</simulation>"""


def binary_frames(path):
    """(h [3, 3] Bohr, lattice vectors as columns; values [N, 3]) per frame of an i-PI 'bin'
    trajectory (raw doubles: full precision). A frame is h (9 doubles), N (int64), 3N doubles,
    the names and a title of varying length; the cell is fixed in these runs, so frames are
    found by the cell bytes that start each one."""
    data = Path(path).read_bytes()
    head = data[:72]
    starts = []
    at = 0
    while (at := data.find(head, at)) >= 0:
        starts.append(at)
        at += 72
    frames = []
    for start in starts:
        h = np.frombuffer(data, float, 9, start).reshape(3, 3)
        nat = int(np.frombuffer(data, np.int64, 1, start + 72)[0])
        frames.append((h.copy(), np.frombuffer(data, float, 3 * nat, start + 80).reshape(nat, 3).copy()))
    return frames


def prepare(workdir, atoms, xml_for_address, tag="t"):
    address = unique_address(tag)
    write_ipi_xyz(workdir / "init.xyz", atoms)
    (workdir / "input.xml").write_text(xml_for_address(address))
    return address


def run_in_process(workdir, atoms, xml_for_address, **driver_kwargs):
    """i-PI as a subprocess, the driver in this process; returns the driver after EXIT."""
    address = prepare(workdir, atoms, xml_for_address)
    client = SocketClient(address, unix=True, connect_timeout=60)
    driver = Driver(Predictor(), client, numbers=atoms.numbers, **driver_kwargs)
    with IPIServer(workdir, socket_path=client.target) as server:
        server.wait_for_socket()
        assert serve(driver) == 0, server.log_tail()
        assert server.wait(timeout=60) == 0, server.log_tail()
    return driver


# ------------------------------------------------------------------------------ real server
def test_nve_energy_conservation_and_forces_equal_ase(tmp_path):
    atoms = crystal(repeat=3)  # 108 atoms
    steps = 500
    driver = run_in_process(tmp_path, atoms, lambda a: simulation_xml(a, steps, stride=1))
    assert driver.steps >= steps
    # timing: the first step (set-up) apart, the steady state's share outside the model
    summary = driver.timing_summary()
    assert summary.startswith("first step") and f"serving {driver.steps - 1} requests" in summary, summary
    outside = float(summary.split("% of it outside the model")[0].split()[-1])
    assert 0.0 < outside < 100.0 and 0.0 < driver.first_step_seconds < driver.busy_seconds
    props = read_properties(tmp_path / "sim.out")
    conserved = props["conserved{electronvolt}"] / len(atoms)
    drift = np.polyfit(props["time{picosecond}"], conserved, 1)[0]
    print(f"\ni-PI NVE, 108 Cu, 1 fs x {steps}: drift {drift * 1e3:+.4f} meV/atom/ps, "
          f"fluctuation {conserved.std() * 1e3:.4f} meV/atom")
    assert abs(drift) < 1e-3  # eV/atom/ps
    assert conserved.std() < 1e-3

    # the forces i-PI received (its json trajectory, full precision) equal the ASE calculator
    positions, forces = binary_frames(tmp_path / "sim.pos_0.bin"), binary_frames(tmp_path / "sim.for_0.bin")
    assert len(positions) == len(forces) >= steps
    calc = MLIPCalculator()
    for k in (0, len(positions) // 2, len(positions) - 1):
        (h, q), (_, f_ipi) = positions[k], forces[k]
        frame = atoms.copy()
        frame.set_cell(h.T * ANGSTROM_PER_BOHR)
        frame.positions = q * ANGSTROM_PER_BOHR
        frame.calc = calc
        f_ase = frame.get_forces() * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
        assert np.abs(f_ase - f_ipi).max() < 1e-8 * max(1.0, np.abs(f_ipi).max())


def test_virial_equals_ase_stress(tmp_path):
    atoms = crystal(repeat=3, seed=3)
    atoms.set_cell(atoms.cell.array * 0.99, scale_atoms=True)  # compressed: a sizeable virial
    run_in_process(tmp_path, atoms, lambda a: simulation_xml(a, 2, temperature=10))
    rows = [line.split() for line in (tmp_path / "sim.out").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    (h, q), = binary_frames(tmp_path / "sim.pos_0.bin")[:1]
    frame = atoms.copy()
    frame.set_cell(h.T * ANGSTROM_PER_BOHR)
    frame.positions = q * ANGSTROM_PER_BOHR
    frame.calc = MLIPCalculator()
    stress = frame.get_stress(voigt=False)  # eV/Å^3; the virial is W = -V stress^T
    w_over_v = -stress.T * wire.HARTREE_PER_EV / wire.BOHR_PER_ANGSTROM**3
    printed = np.array(rows[0][5:11], dtype=float)  # virial_md: xx yy zz xy xz yz, atomic units
    expected = w_over_v[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    assert np.abs(expected).max() > 1e-6
    np.testing.assert_allclose(printed, expected, rtol=1e-6, atol=1e-12)  # printed with 8 digits


def test_monitor_every_computes_monitors_on_every_nth_step(tmp_path):
    atoms = crystal(repeat=3, seed=5)
    seen = []
    driver = run_in_process(tmp_path, atoms, lambda a: simulation_xml(a, 5, temperature=10), monitor_every=2,
                            on_step=lambda step, pred: seen.append((step, pred.mahalanobis is not None)))
    assert seen == [(step, step % 2 == 0) for step in range(driver.steps)] and driver.steps >= 5
    with pytest.raises(ValueError, match="monitor_every must be >= 1 with monitor rules"):
        Driver(Predictor(), SocketClient("x"), numbers=atoms.numbers, monitor=MonitorPolicy([]), monitor_every=0)


def test_monitor_extras_are_sent_on_every_step_nan_when_not_computed(tmp_path):
    """i-PI's <trajectory extra_type='mahalanobis_max'> (examples/ipi/nve.xml) reads its keys on
    every step it writes, so the driver sends them on every step: NaN where monitors did not run
    (--monitor-every 0 stopped i-PI with a KeyError on its first step)."""
    atoms = crystal(repeat=3, seed=6)
    extra = "<trajectory filename='t2' stride='1' extra_type='mahalanobis_max,d_min_max'> extras </trajectory>"
    written = {}
    for every in (0, 2):
        root = tmp_path / f"every_{every}"
        root.mkdir()
        driver = run_in_process(root, atoms, lambda a: simulation_xml(a, 4, temperature=10, extra_output=extra),
                                monitor_every=every)
        lines = (root / "sim.t2_0").read_text().splitlines()
        written[every] = np.array([line.split() for line in lines if line.strip() and "#" not in line], dtype=float)
        assert len(written[every]) >= 4 and written[every].shape[1] == 2 and driver.steps >= 4
    assert np.isnan(written[0]).all()
    monitored = ~np.isnan(written[2][:, 0])
    assert monitored.any() and (~monitored).any()  # every other step
    assert (written[2][monitored] > 0).all() and np.isnan(written[2][~monitored]).all()


def test_ffcommittee_active_output(tmp_path):
    """i-PI's own <ffcommittee parse_json='true'> consumes the driver's committee extras and
    writes the active-learning file when the committee spread crosses active_thresh."""
    atoms = crystal(repeat=3, vacancy=True, rattle=0.12)
    committee = """<ffcommittee name='committee'> {socket} <alpha> 1.0 </alpha> <parse_json> true </parse_json>
      <active_thresh units='electronvolt'> 1e-4 </active_thresh> <active_output> active </active_output>
      </ffcommittee>"""
    extra = "<trajectory filename='committee_pot' stride='1' extra_type='committee_pot'> extras </trajectory>"
    driver = run_in_process(tmp_path, atoms, lambda a: simulation_xml(a, 5, forcefield=committee, extra_output=extra),
                            committee="full")
    active = tmp_path / "sim.active"
    assert active.exists() and active.stat().st_size > 0, sorted(p.name for p in tmp_path.iterdir())
    record, _ = json.JSONDecoder().raw_decode(active.read_text())  # i-PI appends JSON records
    assert record["uncertainty"] > 1e-4 / 27.211386 and len(record["position"]) == 3 * len(atoms)
    # i-PI parsed one committee member per ensemble member out of the single driver's extras
    members = [line.split() for line in (tmp_path / "sim.committee_pot_0").read_text().splitlines()
               if line.strip() and not line.strip().startswith("#")]
    assert len(members) >= 5 and all(len(m) == driver.evaluator.model.ensemble_size for m in members)


def test_monitor_dump_and_halt_stop_ipi_softly(tmp_path):
    atoms = crystal(repeat=3, vacancy=True, rattle=0.1)
    policy = MonitorPolicy([Rule("energy_sigma", 1e-6, ("dump", "halt"))], dump_path=tmp_path / "flagged.extxyz")
    steps = 400
    driver = run_in_process(tmp_path, atoms, lambda a: simulation_xml(a, steps), monitor=policy,
                            exit_file=tmp_path / "EXIT")
    assert driver.halt_requested
    assert driver.steps < steps  # i-PI saw the EXIT file and stopped early
    frames = read(tmp_path / "flagged.extxyz", ":")
    assert len(frames) >= 1
    assert frames[0].arrays["energy_sigma"].shape == (len(atoms),)
    assert "mahalanobis" in frames[0].arrays and frames[0].info["signal"] == "energy_sigma"


def test_pimd_beads_served_by_two_independent_drivers(tmp_path):
    atoms = crystal(repeat=2, vacancy=True)
    thermostat = "<thermostat mode='pile_l'> <tau units='femtosecond'> 100 </tau> </thermostat>"
    address = prepare(tmp_path, atoms, lambda a: simulation_xml(a, 10, dynamics="nvt", temperature=300, nbeads=4,
                                                                  thermostat=thermostat), "pimd")
    with IPIServer(tmp_path, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        drivers = [start_ipi_driver("--address", address, "--unix") for _ in range(2)]
        assert server.wait(timeout=300) == 0, server.log_tail()
        outputs = [d.communicate(timeout=60) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    served = [served_steps(err) for _, err in outputs]
    assert sum(served) >= 4 * 10 and min(served) > 0, served  # both drivers took beads
    assert len(read_properties(tmp_path / "sim.out")["step"]) >= 10


def test_two_mpi_ranks_equal_one(tmp_path):
    atoms = crystal(repeat=3, vacancy=True)
    forces = {}
    for ranks in (1, 2):
        workdir = tmp_path / f"ranks{ranks}"
        workdir.mkdir()
        address = prepare(workdir, atoms, lambda a: simulation_xml(a, 4, temperature=600), f"mpi{ranks}")
        with IPIServer(workdir, socket_path=f"/tmp/ipi_{address}") as server:
            server.wait_for_socket()
            command = [MLIP_MD, "ipi", "--address", address, "--unix"]
            if ranks > 1:
                command = [shutil.which("mpiexec"), "-n", str(ranks)] + command
            proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            assert server.wait(timeout=60) == 0
        forces[ranks] = [f for _, f in binary_frames(workdir / "sim.for_0.bin")]
    assert len(forces[1]) == len(forces[2]) >= 4
    for f1, f2 in zip(forces[1], forces[2]):
        # atomic units; 1e-10 eV/Å is ~2e-12 Hartree/Bohr
        assert np.abs(f1 - f2).max() < 1e-10 * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM


# ------------------------------------------------------------------------------ failure modes
class FakeServer:
    """A scripted i-PI stand-in on a unix socket: ``script(conn)`` talks to one driver."""

    def __init__(self, path, script):
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.script = script
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.listener.accept()
            with conn:
                self.script(conn)
        except Exception as exc:  # surfaced by the test
            self.error = exc

    def close(self):
        self.thread.join(timeout=30)
        self.listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def handshake(conn):
    conn.sendall(wire.encode_header(wire.Message.STATUS))
    assert conn.recv(12) == wire.encode_header(wire.Message.NEEDINIT)
    conn.sendall(wire.encode_init(0, b""))
    conn.sendall(wire.encode_header(wire.Message.STATUS))
    assert conn.recv(12) == wire.encode_header(wire.Message.READY)


def wait_for_hangup(conn):
    """Block until the driver closes its end (a reset counts as closing)."""
    try:
        conn.settimeout(60)
        conn.recv(1)
    except ConnectionError:
        pass


def run_against(tmp_path, script, *extra, timeout=120, launcher=()):
    prefix = str(tmp_path / "s_")
    server = FakeServer(prefix + "fake", script)
    try:
        proc = subprocess.run([*launcher, MLIP_MD, "ipi", "--address", "fake", "--unix",
                               "--socket-prefix", prefix, *map(str, extra)], env=ENV, capture_output=True,
                              text=True, timeout=timeout)
    finally:
        server.close()
    assert server.error is None, server.error
    return proc


def assert_one_line_error(proc, code, text):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_server_retries_then_times_out_clearly(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([MLIP_MD, "ipi", "--address", "nobody", "--unix",
                           "--socket-prefix", str(tmp_path / "s_"), "--connect-timeout", "2"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, 1, "could not reach i-PI")
    assert "is `i-pi` running" in proc.stderr
    assert time.monotonic() - start >= 2.0


def test_server_started_after_the_driver(tmp_path):
    atoms = crystal(repeat=2)
    address = prepare(tmp_path, atoms, lambda a: simulation_xml(a, 3), "late")
    driver = start_ipi_driver("--address", address, "--unix", "--connect-timeout", "120")
    time.sleep(3)  # the driver is retrying with backoff meanwhile
    with IPIServer(tmp_path, socket_path=f"/tmp/ipi_{address}") as server:
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, err
        assert server.wait(timeout=60) == 0
    assert "i-PI sent EXIT after 4 steps; first step" in err and "% of it outside the model" in err, err


def test_server_killed_mid_run(tmp_path):
    atoms = crystal(repeat=2)
    address = prepare(tmp_path, atoms, lambda a: simulation_xml(a, 100000), "kill")
    with IPIServer(tmp_path, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        driver = start_ipi_driver("--address", address, "--unix")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = tmp_path / "sim.out"
            if out.exists() and len(out.read_text().splitlines()) > 30:
                break
            time.sleep(0.2)
        os.killpg(server.process.pid, signal.SIGKILL)
        out, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, err
    assert "i-PI closed the connection" in err or "connection to i-PI lost" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_malformed_header(tmp_path):
    def script(conn):
        conn.sendall(b"GARBAGE\x00\xff   ")
        wait_for_hangup(conn)

    assert_one_line_error(run_against(tmp_path, script), 1, "protocol error")


def test_truncated_posdata(tmp_path):
    def script(conn):
        handshake(conn)
        message = wire.encode_posdata(np.eye(3) * 10, np.zeros((4, 3)) + [[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 2]])
        conn.sendall(message[: len(message) // 2])  # then hang up mid-message

    assert_one_line_error(run_against(tmp_path, script), 1, "closed the connection mid-message")


def test_wrong_atom_count(tmp_path):
    atoms = crystal(repeat=2)
    atoms.write(tmp_path / "structure.xyz")

    def script(conn):
        handshake(conn)
        conn.sendall(wire.encode_posdata(atoms.cell.array, atoms.positions[:-1]))
        wait_for_hangup(conn)

    proc = run_against(tmp_path, script, "--structure", tmp_path / "structure.xyz")
    assert_one_line_error(proc, 1, "31 atoms")
    assert "32" in proc.stderr


def test_zero_volume_cell(tmp_path):
    positions = np.array([[0.0, 0, 0], [2.5, 0, 0]])

    def script(conn):
        handshake(conn)
        # encode_posdata refuses a zero-volume cell itself, so craft the bytes by hand
        good = bytearray(wire.encode_posdata(np.eye(3) * 10, positions))
        good[12:12 + 72] = np.zeros(9).tobytes()
        conn.sendall(bytes(good))
        wait_for_hangup(conn)

    assert_one_line_error(run_against(tmp_path, script), 1, "volume")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_socket_and_exits(tmp_path, signum):
    saw_eof = threading.Event()
    ready = threading.Event()

    def script(conn):
        handshake(conn)
        ready.set()
        conn.settimeout(60)
        if conn.recv(1) == b"":
            saw_eof.set()

    prefix = str(tmp_path / "s_")
    server = FakeServer(prefix + "sig", script)
    proc = start_ipi_driver("--address", "sig", "--unix", "--socket-prefix", prefix)
    try:
        assert ready.wait(60)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 128 + signum, err
    assert signal.Signals(signum).name in err and "Traceback" not in err
    assert saw_eof.is_set()


# ------------------------------------------------------------------------------ watchdog (--timeout)
def two_atoms_posdata(positions=((0.0, 0.0, 0.0), (2.5, 0.0, 0.0))) -> bytes:
    return wire.encode_posdata(np.eye(3) * 10, np.array(positions, dtype=float))


def test_stall_mid_message_times_out(tmp_path):
    """The server sends half a POSDATA and keeps the socket open: the driver gives up after
    --timeout seconds without a byte, saying it was in the middle of a POSDATA message."""
    def script(conn):
        handshake(conn)
        message = two_atoms_posdata()
        conn.sendall(message[: len(message) // 2])
        wait_for_hangup(conn)

    proc = run_against(tmp_path, script, "--timeout", "1")
    assert_one_line_error(proc, 1, "stopped sending for 1 s in the middle of a POSDATA message (mid-message")
    assert "--timeout" in proc.stderr


def test_stall_between_messages_times_out(tmp_path):
    """The server initialises the driver and then sends nothing (a stalled i-PI)."""
    def script(conn):
        handshake(conn)
        wait_for_hangup(conn)

    proc = run_against(tmp_path, script, "--timeout", "1")
    assert_one_line_error(proc, 1, "i-PI sent no request for 1 s (waiting between messages)")


def test_timeout_watches_progress_not_message_time(tmp_path):
    """A POSDATA trickling in slower than --timeout in total, but with progress well within it,
    is served; --timeout 0 waits through a pause longer than any limit set here."""
    reply = {}

    def script(conn):
        handshake(conn)
        message = two_atoms_posdata()
        for k in range(6):  # 6 pieces, 0.5 s apart: 2.5 s in all, against --timeout 2
            conn.sendall(message[k * len(message) // 6:(k + 1) * len(message) // 6])
            time.sleep(0.5)
        conn.sendall(wire.encode_header(wire.Message.GETFORCE))
        conn.settimeout(60)
        head = conn.recv(12, socket.MSG_WAITALL)
        reply["header"] = head
        conn.sendall(wire.encode_header(wire.Message.EXIT))
        wait_for_hangup(conn)

    proc = run_against(tmp_path, script, "--timeout", "2")
    assert proc.returncode == 0, proc.stderr
    assert reply["header"] == wire.encode_header(wire.Message.FORCEREADY)

    def pause(conn):
        handshake(conn)
        time.sleep(2.5)
        conn.sendall(wire.encode_header(wire.Message.EXIT))
        wait_for_hangup(conn)

    proc = run_against(tmp_path, pause, "--timeout", "0")
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        SocketClient("x", timeout=-1.0)


# ------------------------------------------------------------------------------ exit codes
@pytest.mark.parametrize("positions, text, ranks", [
    (((0.0, 0.0, 0.0), (1e300, 0.0, 0.0)), "cell lengths away", 1),  # finite, but nowhere near the cell
    (((0.0, 0.0, 0.0), (1e300, 0.0, 0.0)), "cell lengths away", 2),  # every rank fails, rank 0 reports
    (((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)), "on top of each other", 1),
])
def test_structure_the_model_cannot_evaluate_exits_1(tmp_path, positions, text, ranks):
    def script(conn):
        handshake(conn)
        conn.sendall(two_atoms_posdata(positions))
        try:  # the driver may reject the positions and hang up before GETFORCE arrives
            conn.sendall(wire.encode_header(wire.Message.GETFORCE))
        except (BrokenPipeError, ConnectionResetError):
            return
        wait_for_hangup(conn)

    launcher = (shutil.which("mpiexec"), "-n", str(ranks)) if ranks > 1 else ()
    proc = run_against(tmp_path, script, launcher=launcher)
    assert_one_line_error(proc, 1, "i-PI sent a structure the model cannot evaluate")
    assert text in proc.stderr and len(proc.stderr.strip().splitlines()) == 2  # 'connected', then the reason


def test_bad_setup_input_exits_2(tmp_path):
    """Command-line and set-up mistakes exit 2 before any connection is tried."""
    atoms = crystal(repeat=1)
    atoms.numbers[0] = 79  # Au: not in the Cu model
    atoms.write(tmp_path / "structure.xyz")
    args = ["--address", "nobody", "--unix", "--socket-prefix", str(tmp_path / "s_"), "--connect-timeout", "1"]
    proc = subprocess.run([MLIP_MD, "ipi", *args, "--structure", str(tmp_path / "structure.xyz")], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, 2, "Au")
    proc = subprocess.run([MLIP_MD, "ipi", *args, "--timeout", "-1"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc, 2, "--timeout: takes a number of seconds >= 0")


def test_batched_protocol_refused_with_a_fix(tmp_path):
    """A real i-PI server with <batch_size> 2 in its <ffsocket> announces its batched protocol
    in INIT; the driver refuses it with the fix instead of misreading the batched POSDATA."""
    atoms = crystal(repeat=2, vacancy=True)
    batched = "<ffsocket name='mlip_md' mode='unix'> <address> {address} </address> <batch_size> 2 </batch_size> </ffsocket>"
    thermostat = "<thermostat mode='pile_l'> <tau units='femtosecond'> 100 </tau> </thermostat>"
    address = prepare(tmp_path, atoms, lambda a: simulation_xml(a, 3, dynamics="nvt", temperature=300, nbeads=2,
                                                                forcefield=batched.replace("{address}", a),
                                                                thermostat=thermostat), "batch")
    with IPIServer(tmp_path, socket_path=f"/tmp/ipi_{address}") as server:
        server.wait_for_socket()
        proc = subprocess.run([MLIP_MD, "ipi", "--address", address, "--unix"], env=ENV, capture_output=True,
                              text=True, timeout=120)
    assert_one_line_error(proc, 1, "batched protocol (batch_size:2 in the INIT string")
    assert "remove <batch_size> from the <ffsocket>" in proc.stderr
    assert "atoms" not in proc.stderr.splitlines()[-1]  # not "announced 1068039066 atoms"
