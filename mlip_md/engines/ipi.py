"""i-PI client ("driver"): serves an mlip_md model to a running ``i-pi`` server.

    mlip-md ipi --model m.pt --address NAME --unix            # /tmp/ipi_NAME
    mlip-md ipi --model m.pt --address HOST --port 31415      # TCP
    mpiexec -n 4 mlip-md ipi ...                              # centre atoms split over ranks

Protocol (i-PI docs, "socket protocol"): the server asks STATUS, we answer NEEDINIT / READY /
HAVEDATA; INIT carries an index and a parameter string; POSDATA the cell and positions (Bohr);
GETFORCE asks for FORCEREADY with energy (Hartree), forces, virial and an extras JSON string;
EXIT ends the run. Byte-level encoding and unit conversion live in the C++ codec
(:mod:`mlip_md.engines.ipi_wire`); this module is the small loop around it. An INIT string
announcing i-PI's batched protocol (``batch_size:N``) is refused; a server that sends nothing
for ``SocketClient.timeout`` seconds is given up on. :func:`serve` maps every outcome to the
exit code of ``mlip-md ipi``.

Extras every step (JSON): ``committee_pot`` (Hartree, one per member; ``--committee full`` adds
``committee_force`` and ``committee_virial``) for i-PI's ``<ffcommittee parse_json='true'>``,
and mlip_md's monitor values (eV, Å): ``energy_uncertainty``, ``energy_sigma_max``,
``force_sigma_max``, ``mahalanobis_max``, ``d_min_max``, ``min_distance_ratio_min`` and
``flagged`` (atoms with T^2 / d_min above the largest training values,
:func:`mlip_md.monitor.domain_thresholds`, or closer than any training pair).
``monitor_every`` = N computes the monitor values (and applies the default safety policy of
:mod:`mlip_md.safety` and the monitor rules) on every N-th step only, like the LAMMPS plugin's ``uncertainty_every``; the other steps send
``energy_uncertainty`` and the committee keys alone.
"""
from __future__ import annotations

import json
import logging
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import (InvalidStructureError, ProtocolError, ServerGoneError, ServerTimeoutError,
                      UnknownElementError)
from ..monitor import ExtrapolationHalt, MonitorPolicy, domain_thresholds
from ..safety import CloseContactHalt, SafetyPolicy
from . import ipi_wire as wire
from .ipi_wire import Message

log = logging.getLogger("mlip_md.ipi")

COMMITTEE_MODES = ("off", "energy", "full")


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while serving."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


#: seconds without a byte from i-PI after which the driver gives up (``--timeout``)
DEFAULT_TIMEOUT = 600.0


class SocketClient:
    """A connected stream socket to i-PI with exact-length reads into a reusable buffer.

    ``timeout`` (seconds, 0 = wait forever) is a progress watchdog: a read that gets no byte
    for that long, or a send the server does not take for that long, raises
    :class:`~mlip_md.errors.ServerTimeoutError` naming what the driver was waiting for (the
    next request, or the rest of a message). A driver that legitimately idles (more drivers
    than beads, a slow second force field in the same i-PI run) needs a longer one or 0.
    """

    def __init__(self, address: str, unix: bool = True, port: Optional[int] = None,
                 socket_prefix: str = "/tmp/ipi_", connect_timeout: float = 60.0,
                 timeout: float = DEFAULT_TIMEOUT):
        if not unix and port is None:
            raise ValueError("a TCP connection needs --port (or use --unix)")
        if not timeout >= 0.0:
            raise ValueError(f"timeout must be >= 0 seconds (0: wait forever), got {timeout!r}")
        self.target = socket_prefix + address if unix else (address, int(port))
        self.unix = unix
        self.connect_timeout = connect_timeout
        self.timeout = float(timeout)
        self.sock: Optional[socket.socket] = None
        self._buffer = bytearray(1 << 16)

    def describe(self) -> str:
        return f"unix socket {self.target}" if self.unix else f"{self.target[0]}:{self.target[1]}"

    def connect(self) -> None:
        """Connect, retrying with exponential backoff until ``connect_timeout`` seconds."""
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        last: Optional[OSError] = None
        while True:
            family = socket.AF_UNIX if self.unix else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(self.target)
            except OSError as exc:
                sock.close()
                last = exc
                if time.monotonic() + delay > deadline:
                    raise ServerGoneError(
                        f"could not reach i-PI at {self.describe()} within {self.connect_timeout:g} s "
                        f"({last.strerror or last}); is `i-pi` running with this address in its <ffsocket>?"
                    ) from None
                time.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            if not self.unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout or None)
            self.sock = sock
            return

    def recv(self, n: int, message: Optional[Message] = None) -> memoryview:
        """Exactly n bytes (a view into the reusable buffer, valid until the next recv).

        ``message``: the message whose body is being read, or None when the n bytes are the
        next header (the driver is between messages until the first byte arrives)."""
        if n > len(self._buffer):
            self._buffer = bytearray(max(n, 2 * len(self._buffer)))
        view = memoryview(self._buffer)[:n]
        got = 0
        while got < n:
            try:
                chunk = self.sock.recv_into(view[got:], n - got)
            except socket.timeout:
                raise ServerTimeoutError(self._stalled(message, got, n)) from None
            except ConnectionError as exc:
                raise ServerGoneError(f"connection to i-PI lost ({exc.strerror or exc})") from None
            if chunk == 0:
                where = "between messages" if message is None and got == 0 else "mid-message"
                raise ServerGoneError(f"i-PI closed the connection {where}")
            got += chunk
        return view

    def _stalled(self, message: Optional[Message], got: int, n: int) -> str:
        """The one-line reason of a read timeout: what the driver was waiting for."""
        limit = f"{self.timeout:g} s"
        advice = "--timeout sets the limit (0: wait forever)"
        if message is None and got == 0:
            return (f"i-PI sent no request for {limit} (waiting between messages): the server is stalled "
                    f"(e.g. waiting for a driver that died) or has no work for this driver; {advice}")
        what = f"a {message.name} message" if message is not None else "a message header"
        return (f"i-PI stopped sending for {limit} in the middle of {what} (mid-message, {got} of the next "
                f"{n} bytes received): the server is stalled or the stream is out of sync; {advice}")

    def send(self, data) -> None:
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ServerTimeoutError(
                f"i-PI took none of the driver's reply for {self.timeout:g} s (the server is stalled); "
                "--timeout sets the limit (0: wait forever)") from None
        except (BrokenPipeError, ConnectionError) as exc:
            raise ServerGoneError(f"connection to i-PI lost while sending ({exc.strerror or exc})") from None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def _refuse_batched_protocol(init: bytes) -> None:
    """ProtocolError when i-PI's INIT string announces its batched protocol (``batch_size:N``,
    N > 1, sent for ``<batch_size>`` in an ``<ffsocket>``): its POSDATA and FORCEREADY carry N
    structures in another layout, which this driver does not speak."""
    batch = wire.init_batch_size(init)
    if batch > 1:
        raise ProtocolError(
            f"i-PI asked for its batched protocol (batch_size:{batch} in the INIT string, from <batch_size> in "
            "its <ffsocket>); mlip-md ipi serves one structure per request: remove <batch_size> from the "
            "<ffsocket> (or set it to 1) and start one driver per bead for parallel evaluation"
        )


class Driver:
    """Answers i-PI's requests with predictions of ``evaluator`` (a Predictor or
    ParallelPredictor, rank 0).

    ``numbers``: atomic numbers of the system (i-PI does not send them); ``None`` means every
    atom is the model's single element. ``on_step(step, prediction)`` is called after every
    evaluation. ``monitor``: a MonitorPolicy; its ``halt`` action
    asks i-PI to stop by creating ``exit_file`` (i-PI's soft exit) and keeps serving until the
    server sends EXIT.

    The default safety policy (:mod:`mlip_md.safety`) runs on every step with monitors and logs
    its messages as warnings: ``close_contact`` warn / halt (the soft exit above) / dump (to
    ``dump_path``) / ignore, and out-of-domain warnings unless ``ood_warnings`` is False.
    """

    def __init__(self, evaluator, client: SocketClient, numbers: Optional[Sequence[int]] = None,
                 committee: str = "energy", monitor: Optional[MonitorPolicy] = None,
                 exit_file: Optional[Path] = None, max_atoms: int = 10_000_000,
                 on_step: Optional[Callable] = None, monitor_every: int = 1, close_contact: str = "warn",
                 ood_warnings: bool = True, dump_path: Optional[Path] = Path("mlip_md_flagged.extxyz")):
        if committee not in COMMITTEE_MODES:
            raise ValueError(f"committee must be one of {COMMITTEE_MODES}, got {committee!r}")
        if monitor_every < 0 or (monitor is not None and monitor_every == 0):
            raise ValueError(f"monitor_every must be >= 1 with monitor rules (>= 0 without), got {monitor_every}")
        self.evaluator = evaluator
        self.client = client
        model = evaluator.model
        if numbers is None:
            if len(model.atomic_numbers) != 1:
                raise ValueError(
                    f"model knows {', '.join(model.elements)}: give the structure (--structure) so the "
                    "driver knows which atom is which element"
                )
            self.numbers: Optional[np.ndarray] = None
        else:
            self.numbers = np.asarray(numbers, dtype=np.int64)
            model.check_elements(self.numbers)
        self.committee = committee
        self.monitor = monitor
        self.monitor_every = monitor_every
        self.exit_file = exit_file
        self.max_atoms = max_atoms
        self.on_step = on_step
        self.thresholds = domain_thresholds(model)
        self.safety = SafetyPolicy(self.thresholds, close_contact=close_contact, ood_warnings=ood_warnings,
                                   dump_path=dump_path, report=lambda kind, message: log.warning("%s", message))
        self.initialised = False
        self.reply: Optional[bytes] = None
        self.positions: Optional[np.ndarray] = None
        self.steps = 0
        self.busy_seconds = 0.0  # from POSDATA received to FORCEREADY sent, every step
        self.first_step_seconds: Optional[float] = None  # the first step alone (set-up: lists, warm-up)
        self._first_step_model_seconds = 0.0
        self.halt_requested = False
        self.init_string = b""
        self.index = -1

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Serve until i-PI sends EXIT. Raises ServerGoneError (ServerTimeoutError when i-PI stalls),
        ProtocolError (also for i-PI's batched protocol), InvalidStructureError /
        UnknownElementError (a structure the model cannot evaluate), Interrupted."""
        client = self.client
        while True:
            message = wire.decode_header(client.recv(wire.HEADER_LEN))  # no message: between messages
            if message == Message.STATUS:
                status = Message.HAVEDATA if self.reply is not None else (
                    Message.READY if self.initialised else Message.NEEDINIT)
                client.send(wire.encode_header(status))
            elif message == Message.INIT:
                self.index, length = wire.decode_init_prefix(client.recv(wire.INIT_PREFIX_LEN, message))
                self.init_string = bytes(client.recv(length, message)) if length else b""
                _refuse_batched_protocol(self.init_string)
                self.initialised = True
            elif message == Message.POSDATA:
                started = time.perf_counter()
                self._posdata()
            elif message == Message.GETFORCE:
                if self.reply is None:
                    raise ProtocolError("i-PI asked for forces (GETFORCE) before sending positions (POSDATA)")
                client.send(self.reply)
                self.reply = None
                elapsed = time.perf_counter() - started
                self.busy_seconds += elapsed
                if self.first_step_seconds is None:
                    self.first_step_seconds = elapsed
                    self._first_step_model_seconds = self.model_seconds
            elif message == Message.EXIT:
                return
            else:
                raise ProtocolError(f"unexpected message {message.name} from the server")

    def _posdata(self) -> None:
        expected = -1 if self.numbers is None else len(self.numbers)
        prefix = self.client.recv(wire.POSDATA_PREFIX_LEN, Message.POSDATA)
        cell, n = wire.decode_posdata_prefix(prefix, expected, self.max_atoms)
        if self.positions is None or len(self.positions) != n:
            self.positions = np.empty((n, 3), dtype=np.float64)
        wire.decode_positions(self.client.recv(24 * n, Message.POSDATA), n, out=self.positions)
        if self.numbers is None:
            self.numbers = np.full(n, self.evaluator.model.atomic_numbers[0], dtype=np.int64)
        monitors = self.monitor_every > 0 and self.steps % self.monitor_every == 0
        pred = self.evaluator.predict(self.numbers, self.positions, cell, True,
                                      monitors=monitors, force_sigma=self.committee == "full")
        if monitors:
            self._observe(cell, pred)
        # virial as i-PI's own ASE driver sends it: (-stress V)^T = W = -sum r_ij (x) g_ij
        extras = json.dumps(self.extras(pred)).encode()
        self.reply = wire.encode_forceready(pred.energy, pred.forces, pred.virial, extras)
        if self.on_step is not None:
            self.on_step(self.steps, pred)
        self.steps += 1

    @property
    def model_seconds(self) -> float:
        """Wall time rank 0 spent inside the model call."""
        predictor = getattr(self.evaluator, "predictor", self.evaluator)
        return predictor.model_seconds

    def timing_summary(self) -> str:
        """One line: the first step (neighbour-list build, model warm-up) apart, then the steady
        state's time per step and its share outside the model call."""
        if self.first_step_seconds is None:
            return "no steps served"
        first = f"first step {1e3 * self.first_step_seconds:.1f} ms (set-up)"
        served = self.steps - 1
        busy = self.busy_seconds - self.first_step_seconds
        if served < 1 or busy <= 0.0:
            return first
        outside = 1.0 - (self.model_seconds - self._first_step_model_seconds) / busy
        return (f"{first}, then {busy:.3f} s serving {served} requests ({1e3 * busy / served:.2f} ms/step), "
                f"{100 * outside:.1f}% of it outside the model")

    def _observe(self, cell, pred) -> None:
        """The safety policy, then the monitor rules; a halt of either asks i-PI to stop."""
        import ase

        def frame() -> ase.Atoms:
            return ase.Atoms(numbers=self.numbers, positions=self.positions, cell=cell, pbc=True)

        try:
            self.safety.observe(pred, frame, step=self.steps)
            if self.monitor is not None:
                self.monitor.observe(frame(), pred, step=self.steps)
        except (ExtrapolationHalt, CloseContactHalt) as halt:
            if not self.halt_requested:
                self.halt_requested = True
                log.warning("halting: %s", halt)
                if self.exit_file is not None:
                    Path(self.exit_file).touch()

    def extras(self, pred) -> dict:
        """The extras dictionary sent with every FORCEREADY (see the module docstring)."""
        extras: dict = {"energy_uncertainty": pred.energy_uncertainty}
        if self.committee != "off":
            totals = pred.energy_members.sum(axis=1)
            extras["committee_pot"] = (totals * wire.HARTREE_PER_EV).tolist()
        if self.committee == "full" and pred.force_members is not None:
            extras["committee_force"] = (pred.force_members.reshape(len(pred.force_members), -1)
                                         * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM).tolist()
            if pred.member_virials is not None:
                extras["committee_virial"] = (pred.member_virials.reshape(-1, 9) * wire.HARTREE_PER_EV).tolist()
        flagged = np.zeros(0, dtype=np.int64)
        if pred.energy_sigma is not None:
            extras["energy_sigma_max"] = float(pred.energy_sigma.max())
        if pred.force_sigma is not None:
            extras["force_sigma_max"] = float(pred.force_sigma.max())
        if pred.mahalanobis is not None:
            extras["mahalanobis_max"] = float(pred.mahalanobis.max())
            flagged = np.flatnonzero(pred.mahalanobis > self.thresholds.mahalanobis)
        if pred.d_min is not None:
            extras["d_min_max"] = float(pred.d_min.max())
            flagged = np.union1d(flagged, np.flatnonzero(pred.d_min > self.thresholds.d_min))
        if pred.min_distance_ratio is not None:
            extras["min_distance_ratio_min"] = float(pred.min_distance_ratio.min())
            flagged = np.union1d(flagged, np.flatnonzero(pred.min_distance_ratio < 1.0))
        extras["flagged"] = flagged.tolist()
        return extras


def serve(driver: Driver) -> int:
    """Connect, run the driver until EXIT, and always close the socket. Returns an exit code
    (the README's table): 0 after EXIT; 1 when the server could not be reached, vanished, spoke
    nonsense (or the batched protocol), sent a structure the model cannot evaluate, or sent
    nothing for the client's ``timeout``; 128 + signal after SIGTERM / SIGINT. Each failure is
    logged as one line."""
    client = driver.client

    def on_signal(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        client.connect()
        log.info("connected to i-PI at %s%s", client.describe(), getattr(driver, "description", ""))
        driver.run()
        log.info("i-PI sent EXIT after %d steps; %s", driver.steps, driver.timing_summary())
        return 0
    except ServerGoneError as exc:
        log.error("%s (after %d steps)", exc, driver.steps)
        return 1
    except ProtocolError as exc:
        log.error("protocol error: %s (after %d steps)", exc, driver.steps)
        return 1
    except (InvalidStructureError, UnknownElementError) as exc:
        log.error("i-PI sent a structure the model cannot evaluate: %s (after %d steps)", exc, driver.steps)
        return 1
    except Interrupted as exc:
        log.error("%s: closing the connection (after %d steps)", exc, driver.steps)
        return 128 + exc.signum
    finally:
        client.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
