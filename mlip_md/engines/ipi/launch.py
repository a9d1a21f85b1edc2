"""One i-PI driver process (what ``mlip-md ipi`` runs): the evaluator (one model file, the same
split over MPI ranks, or the QM/ML hybrid of a hybrid.toml), the socket, the monitor rules and
the :class:`~.client.Driver`, assembled from :class:`DriverOptions` and served until i-PI says
EXIT.

    from mlip_md.engines.ipi.launch import DriverOptions, run_driver
    exit_code = run_driver(DriverOptions(model="m.pt", address="NAME"))   # /tmp/ipi_NAME

Under ``mpiexec`` every rank calls :func:`run_driver`: rank 0 talks to i-PI, the others
evaluate their share of each structure until rank 0 is done.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

from ...errors import InvalidStructureError, UnknownElementError
from ...process import configure_for_md
from ...runtime.monitors import MonitorPolicy, Rule
from ...runtime.parallel import ParallelPredictor, world_communicator
from ...runtime.predictor import Predictor
from .client import Driver, serve
from .connection import SocketClient

#: the text the "connected to i-PI" log line names a backend kind with
BACKEND_NOTES = {"compiled": " (compiled)", "fused": " (fused descriptor)"}


@dataclasses.dataclass(frozen=True)
class DriverOptions:
    """Everything one driver process needs; the defaults are ``mlip-md ipi``'s (its help text
    explains each option of the same name). Lengths in Å, times in seconds."""

    # what is served
    model: Optional[str] = None  # model file (None: the shipped model); a .pt2 package works too
    hybrid: Optional[Path] = None  # hybrid.toml: serve the QM/ML hybrid instead of ``model``
    device: str = "cpu"
    dtype: Optional[str] = None  # "float32" / "float64" (None: the file's)
    fused: Optional[bool] = None  # fused descriptor kernel (None: whenever it applies)
    compiled: Optional[Path] = None  # .pt2 package of ``model``
    skin: float = 0.5  # neighbour-list skin (Å); 0 rebuilds every step
    threads: Optional[int] = None  # torch threads (None: OMP_NUM_THREADS, else 1)
    # where i-PI is
    address: Optional[str] = None  # unix socket name (/tmp/ipi_NAME) or TCP host
    port: Optional[int] = None  # TCP port (None: unix socket)
    host: Optional[str] = None  # TCP host (default: address, or localhost)
    socket_prefix: str = "/tmp/ipi_"
    connect_timeout: float = 60.0
    timeout: float = 600.0  # give up when i-PI sends nothing this long (0: wait forever)
    # what is sent and checked
    structure: Optional[Path] = None  # a file with the system's atoms (element of each atom)
    committee: str = "energy"  # "off" | "energy" | "full"
    monitor_rules: Sequence[Rule] = ()
    monitor_every: int = 1
    hysteresis: float = 0.1
    cooldown: int = 0
    dedupe: float = 0.05
    close_contact: str = "warn"
    ood_warnings: bool = True
    dump: Path = Path("mlip_md_flagged.extxyz")
    label: Path = Path("mlip_md_candidates.extxyz")
    exit_file: Path = Path("EXIT")


def socket_client(options: DriverOptions) -> SocketClient:
    """The (not yet connected) socket: a unix socket named ``address`` (default "mlip_md") unless
    a TCP ``port`` is given."""
    unix = options.port is None
    target = (options.address or "mlip_md") if unix else (options.host or options.address or "localhost")
    return SocketClient(target, unix=unix, port=options.port, socket_prefix=options.socket_prefix,
                        connect_timeout=options.connect_timeout, timeout=options.timeout)


def run_driver(options: DriverOptions, log_name: str = "mlip-md ipi") -> int:
    """Configure this process for MD (threads, malloc; :func:`mlip_md.process.configure_for_md`)
    and its logging (INFO lines prefixed with ``log_name`` on rank 0, warnings only on the other
    ranks), build the evaluator and serve i-PI. Returns the exit code of :func:`.client.serve`
    on rank 0; on ranks > 0, 0 when rank 0 finished and 1 when the structure could not be
    evaluated (rank 0 logs why)."""
    comm = world_communicator()
    rank = 0 if comm is None else comm.Get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"{log_name}{'' if comm is None else f' [rank {rank}]'}: %(message)s")
    settings = configure_for_md(options.threads)
    description = ""
    if options.hybrid is not None:
        from ...qmml.config import hybrid_evaluator

        evaluator = hybrid_evaluator(options.hybrid, comm)
    else:
        predictor = Predictor(options.model, device=options.device, skin=options.skin, compiled=options.compiled,
                              fused=options.fused, dtype=options.dtype)
        evaluator = predictor if comm is None else ParallelPredictor(predictor, comm)
        description = "; model {}{}, neighbour-list skin {:g} Å, {}".format(
            predictor.model.path, BACKEND_NOTES.get(predictor.model.capabilities.kind, ""), options.skin,
            settings.describe() + ("" if comm is None else " per rank"))
    if rank > 0:
        try:
            evaluator.serve()
        except (InvalidStructureError, UnknownElementError):
            return 1  # every rank met the same structure; rank 0 logs the reason (client.serve)
        return 0
    try:
        return serve(_driver(evaluator, options, description))
    finally:
        if comm is not None:
            evaluator.shutdown()


def _driver(evaluator, options: DriverOptions, description: str) -> Driver:
    numbers = None
    if options.structure:
        from ase.io import read

        numbers = read(options.structure).numbers
    monitor = None
    if options.monitor_rules:
        monitor = MonitorPolicy(options.monitor_rules, dump_path=options.dump, label_path=options.label,
                                hysteresis=options.hysteresis, cooldown=options.cooldown,
                                dedupe_distance=options.dedupe)
    driver = Driver(evaluator, socket_client(options), numbers=numbers, committee=options.committee,
                    monitor=monitor, exit_file=options.exit_file, monitor_every=options.monitor_every,
                    close_contact=options.close_contact, ood_warnings=options.ood_warnings,
                    dump_path=options.dump)
    driver.description = description  # appended to the "connected to i-PI" log line
    return driver
