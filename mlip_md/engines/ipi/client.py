"""i-PI client ("driver"): serves an mlip_md model to a running ``i-pi`` server.

    mlip-md ipi --model m.pt --address NAME --unix            # /tmp/ipi_NAME
    mlip-md ipi --model m.pt --address HOST --port 31415      # TCP
    mpiexec -n 4 mlip-md ipi ...                              # centre atoms split over ranks

Protocol (i-PI docs, "socket protocol"): the server asks STATUS, we answer NEEDINIT / READY /
HAVEDATA; INIT carries an index and a parameter string; POSDATA the cell and positions (Bohr);
GETFORCE asks for FORCEREADY with energy (Hartree), forces, virial and an extras JSON string;
EXIT ends the run. Byte-level encoding and unit conversion live in the C++ codec
(:mod:`mlip_md.engines.ipi.wire`), the socket in :mod:`mlip_md.engines.ipi.connection`; this
module is the small loop around them. An INIT string announcing i-PI's batched protocol
(``batch_size:N``) is refused; a server that sends nothing for ``SocketClient.timeout`` seconds
is given up on. :func:`serve` maps every outcome to the
exit code of ``mlip-md ipi``.

Extras every step (JSON): ``committee_pot`` (Hartree, one per member, or the energy alone from an
evaluator without a committee such as the QM/ML hybrid; ``--committee full`` adds
``committee_force`` and ``committee_virial``) for i-PI's ``<ffcommittee parse_json='true'>``,
and mlip_md's monitor values (eV, Å): ``energy_uncertainty``, ``energy_sigma_max``,
``force_sigma_max``, ``mahalanobis_max``, ``d_min_max``, ``min_distance_ratio_min`` and
``flagged`` (atoms with T^2 / d_min above the largest training values,
:func:`mlip_md.runtime.monitors.domain_thresholds`, or closer than any training pair).
``monitor_every`` = N computes the monitor values (and applies the default safety policy of
:mod:`mlip_md.runtime.safety` and the monitor rules) on every N-th step only, like the LAMMPS
plugin's ``uncertainty_every``. The keys are the same on every step (an i-PI
``<trajectory extra_type='mahalanobis_max'>`` reads its key on each step it writes): a value
not computed on a step (monitors skipped, no d_min in the model, ``force_sigma_max`` without
``--committee full``) is NaN, as in the LAMMPS plugin, and ``flagged`` is empty.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ...errors import InvalidStructureError, ProtocolError, ServerGoneError, UnknownElementError
from ...runtime.monitors import ExtrapolationHalt, MonitorPolicy, domain_thresholds
from ...runtime.safety import CloseContactHalt, SafetyPolicy
from . import wire
from .connection import SocketClient
from .wire import Message

log = logging.getLogger("mlip_md.ipi")

COMMITTEE_MODES = ("off", "energy", "full")
#: monitor keys of the extras, sent on every step; NOT_COMPUTED (NaN, JSON ``NaN``, which i-PI's
#: json.loads reads) where a step has no value
MONITOR_EXTRAS = ("energy_sigma_max", "force_sigma_max", "mahalanobis_max", "d_min_max", "min_distance_ratio_min")
NOT_COMPUTED = float("nan")


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while serving."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


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
    """Answers i-PI's requests with predictions of ``evaluator`` (an
    :class:`~mlip_md.runtime.backend.Evaluator`: a Predictor, a ParallelPredictor on rank 0, the
    QM/ML hybrid).

    ``numbers``: atomic numbers of the system (i-PI does not send them); ``None`` means every
    atom is the model's single element. ``on_step(step, prediction)`` is called after every
    evaluation. ``monitor``: a MonitorPolicy; its ``halt`` action
    asks i-PI to stop by creating ``exit_file`` (i-PI's soft exit) and keeps serving until the
    server sends EXIT.

    The default safety policy (:mod:`mlip_md.runtime.safety`) runs on every step with monitors and logs
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
        info = evaluator.info
        if numbers is None:
            if len(info.atomic_numbers) != 1:
                raise ValueError(
                    f"model knows {', '.join(info.elements)}: give the structure (--structure) so the "
                    "driver knows which atom is which element"
                )
            self.numbers: Optional[np.ndarray] = None
        else:
            self.numbers = np.asarray(numbers, dtype=np.int64)
            evaluator.check_elements(self.numbers)
        self.committee = committee
        self.monitor = monitor
        self.monitor_every = monitor_every
        self.exit_file = exit_file
        self.max_atoms = max_atoms
        self.on_step = on_step
        self.thresholds = domain_thresholds(info)
        self.safety = SafetyPolicy(self.thresholds, close_contact=close_contact, ood_warnings=ood_warnings,
                                   dump_path=dump_path, report=lambda kind, message: log.warning("%s", message))
        #: appended to the "connected to i-PI" log line (the CLI names the model and its backend)
        self.description = ""
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
            self.numbers = np.full(n, self.evaluator.info.atomic_numbers[0], dtype=np.int64)
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
        return self.evaluator.model_seconds

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
        if self.committee != "off":  # an evaluator without a committee sends its energy alone
            totals = pred.energy_members.sum(axis=1) if pred.energy_members is not None else np.array([pred.energy])
            extras["committee_pot"] = (totals * wire.HARTREE_PER_EV).tolist()
        if self.committee == "full" and pred.force_members is not None:
            extras["committee_force"] = (pred.force_members.reshape(len(pred.force_members), -1)
                                         * wire.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM).tolist()
            if pred.member_virials is not None:
                extras["committee_virial"] = (pred.member_virials.reshape(-1, 9) * wire.HARTREE_PER_EV).tolist()
        flagged = np.zeros(0, dtype=np.int64)
        extras.update({key: NOT_COMPUTED for key in MONITOR_EXTRAS})  # same keys every step
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
    (the table of docs/ipi.md): 0 after EXIT; 1 when the server could not be reached, vanished, spoke
    nonsense (or the batched protocol), sent a structure the model cannot evaluate, or sent
    nothing for the client's ``timeout``; 128 + signal after SIGTERM / SIGINT. Each failure is
    logged as one line."""
    client = driver.client

    def on_signal(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        client.connect()
        log.info("connected to i-PI at %s%s", client.describe(), driver.description)
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
