"""i-PI socket-protocol codec: encode / decode the bytes of i-PI messages.

Thin front-end over the C++ codec (section 3 of ``csrc/include/mlip_md.h``,
bound in :mod:`mlip_md._core`). It does no I/O: the driver loop reads the
bytes from the socket and hands them here, and sends what it gets back.

Conventions on the Python side (the wire uses atomic units):

* lengths in Angstrom, energies in eV, forces in eV/Angstrom, virial in eV;
* cells as ``[3, 3]`` arrays whose ROWS are the lattice vectors (ASE
  convention; i-PI's ``h`` has them as columns, the codec transposes);
* conversions use exactly i-PI's constants (``ipi/utils/units.py``), dividing
  on decode and multiplying on encode as i-PI's ``unit_to_user`` /
  ``unit_to_internal`` do, so results match i-PI's own Python drivers bit for
  bit.

Reading a step from the socket (the driver loop)::

    msg = decode_header(recv_exact(HEADER_LEN))
    if msg is Message.POSDATA:
        cell, n = decode_posdata_prefix(recv_exact(POSDATA_PREFIX_LEN), expected_atoms=n0)
        decode_positions(recv_exact(24 * n), n, out=positions)   # no allocation
    ...
    sock.sendall(encode_forceready(energy, forces, virial, extras, out=buffer))

Only i-PI's standard protocol is covered: its batched mode (announced by a
``batch_size:N`` token in the INIT string) and shared-memory transport use other
message layouts, so the driver must refuse them.

Every malformed, truncated or inconsistent input raises
:class:`mlip_md.errors.ProtocolError` (a ``ValueError``) carrying the C
message; no input makes the codec crash or read out of bounds.
"""
from __future__ import annotations

import enum
import re

import numpy as np

from ..._native import core as _core
from ...errors import ProtocolError

__all__ = [
    "Message", "HEADER_LEN", "INIT_PREFIX_LEN", "POSDATA_PREFIX_LEN", "MAX_INIT_LEN", "MAX_ATOMS",
    "BOHR_PER_ANGSTROM", "HARTREE_PER_EV", "HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM", "decode_header", "encode_header",
    "decode_init_prefix", "encode_init", "init_batch_size", "decode_posdata_prefix", "decode_positions",
    "posdata_size", "encode_posdata", "forceready_size", "encode_forceready", "decode_forceready",
]

#: Length in bytes of every message header.
HEADER_LEN: int = _core.IPI_HEADER_LEN
#: Bytes after an INIT header before the init string (int32 index, int32 length).
INIT_PREFIX_LEN: int = _core.IPI_INIT_PREFIX_LEN
#: Bytes after a POSDATA header before the positions (18 float64 + int32 count).
POSDATA_PREFIX_LEN: int = _core.IPI_POSDATA_PREFIX_LEN
#: Largest INIT string accepted (bytes).
MAX_INIT_LEN: int = _core.IPI_MAX_INIT_LEN
#: Hard cap on any atom count.
MAX_ATOMS: int = _core.IPI_MAX_ATOMS

#: Bohr per Angstrom (i-PI's ``UnitMap["length"]["angstrom"]``).
BOHR_PER_ANGSTROM: float = _core.IPI_BOHR_PER_ANGSTROM
#: Hartree per eV (i-PI's ``UnitMap["energy"]["electronvolt"]``).
HARTREE_PER_EV: float = _core.IPI_HARTREE_PER_EV
#: Hartree/Bohr per eV/Angstrom (i-PI's ``UnitMap["force"]["ev/ang"]``; NOT exactly
#: HARTREE_PER_EV / BOHR_PER_ANGSTROM, i-PI's constants are rounded independently).
HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM: float = _core.IPI_HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM


class Message(enum.IntEnum):
    """i-PI message kinds (values match ``mlip_ipi_message`` in mlip_md.h)."""

    STATUS = 0  #: server asks for the client's state
    READY = 1  #: client is waiting for positions
    NEEDINIT = 2  #: client needs an INIT first
    HAVEDATA = 3  #: client has forces ready
    INIT = 4  #: server sends the replica index and init string
    POSDATA = 5  #: server sends cell and positions
    GETFORCE = 6  #: server asks for the forces
    FORCEREADY = 7  #: client sends energy, forces, virial, extras
    EXIT = 8  #: server ends the run

    @property
    def header(self) -> bytes:
        """The 12 header bytes (upper case, space padded)."""
        return _HEADERS[self]


assert len(Message) == _core.IPI_N_MESSAGES
_HEADERS = {m: _core.ipi_encode_header(int(m)) for m in Message}
_MESSAGES = tuple(Message)


def decode_header(b) -> Message:
    """The :class:`Message` of a 12-byte header ``b`` (bytes-like).

    Raises ProtocolError for a short read or an unknown header (the message
    shows the received bytes, non-printables escaped).
    """
    try:
        return _MESSAGES[_core.ipi_decode_header(b)]
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


def encode_header(message: Message | int) -> bytes:
    """The 12 header bytes of ``message``."""
    try:
        return _HEADERS[Message(message)]
    except ValueError as exc:
        raise ProtocolError(f"unknown i-PI message kind {message!r}") from exc


def decode_init_prefix(b) -> tuple[int, int]:
    """Decode the 8 bytes after an INIT header.

    Returns ``(index, length)``: the replica (bead) index (>= 0) and the
    length in bytes (0 <= length <= MAX_INIT_LEN) of the init string that
    follows on the socket.
    """
    try:
        return _core.ipi_decode_init_prefix(b)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


def encode_init(index: int, init: bytes | str = b"") -> bytes:
    """A complete INIT message (server side: tests and mock servers).

    ``index``: replica index (>= 0); ``init``: init string (str is UTF-8
    encoded), at most MAX_INIT_LEN bytes.
    """
    if isinstance(init, str):
        init = init.encode("utf-8")
    try:
        return _core.ipi_encode_init(index, init)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


_BATCH_TOKEN = re.compile(rb"(?:^|[\s,])batch_size:([^\s,]*)")


def init_batch_size(init: bytes | str) -> int:
    """The batch size i-PI announces in an INIT string: N of a ``batch_size:N`` token (i-PI
    appends ``" batch_size:N"``, after a comma when there are other parameters, for
    ``<batch_size> N </batch_size>`` > 1 in an ``<ffsocket>``), or 1 when there is none.

    Raises ProtocolError for a token whose value is not a whole number >= 1.
    """
    if isinstance(init, str):
        init = init.encode("utf-8")
    match = _BATCH_TOKEN.search(bytes(init))
    if match is None:
        return 1
    token = match.group(0).strip(b" \t\r\n\f\v,").decode("ascii", "backslashreplace")
    text = token[len("batch_size:"):]
    if not text.isdigit() or int(text) < 1:
        raise ProtocolError(f"INIT: malformed token '{token}' in the init string (i-PI sends batch_size:N, N >= 1)")
    return int(text)


def decode_posdata_prefix(
    b, expected_atoms: int = -1, max_atoms: int = 10_000_000
) -> tuple[np.ndarray, int]:
    """Decode the 148 bytes after a POSDATA header.

    ``expected_atoms``: the atom count the driver was initialised with, or -1
    to accept any; ``max_atoms``: upper bound on the count (1..MAX_ATOMS).

    Returns ``(cell, n_atoms)``: ``cell`` a new float64 ``[3, 3]`` array in
    Angstrom whose ROWS are the lattice vectors (the transpose of i-PI's
    ``h``), and the atom count whose ``24 * n_atoms`` bytes of positions
    follow. i-PI's inverse cell is checked (finite) and ignored.

    Raises ProtocolError for a wrong length, non-finite cell values, a
    zero-volume cell, or an atom count < 1, > max_atoms or != expected_atoms.
    """
    try:
        return _core.ipi_decode_posdata_prefix(b, expected_atoms, max_atoms)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


def decode_positions(b, n_atoms: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode the ``24 * n_atoms`` position bytes of a POSDATA message.

    Returns the positions as a float64 ``[n_atoms, 3]`` array in Angstrom.
    With ``out`` (a writable C-contiguous float64 ``[n_atoms, 3]`` array) the
    positions are written into it and ``out`` is returned: no allocation per
    step. On error the content of ``out`` is unspecified.

    Raises ProtocolError for a wrong length or a NaN / inf value (naming the
    first bad atom).
    """
    try:
        return _core.ipi_decode_positions(b, n_atoms, out)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


def posdata_size(n_atoms: int) -> int:
    """Bytes of a complete POSDATA message (header included) for ``n_atoms``."""
    try:
        size = _core.ipi_posdata_size(n_atoms)
    except (ValueError, TypeError):
        size = 0
    if size == 0:
        raise ProtocolError(f"n_atoms = {n_atoms!r} outside [1, {MAX_ATOMS}]")
    return size


def encode_posdata(cell, positions) -> bytes:
    """A complete POSDATA message (server side: tests and mock servers).

    ``cell``: ``[3, 3]`` Angstrom, ROWS = lattice vectors (finite, non-zero
    volume); ``positions``: ``[N, 3]`` Angstrom (finite). The message carries
    i-PI's ``h = cell.T`` and its inverse, in Bohr.
    """
    try:
        return _core.ipi_encode_posdata(cell, positions)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


def forceready_size(n_atoms: int, extras_len: int = 0) -> int:
    """Bytes of a complete FORCEREADY message (header included)."""
    try:
        size = _core.ipi_forceready_size(n_atoms, extras_len)
    except (ValueError, TypeError):
        size = 0
    if size == 0:
        raise ProtocolError(
            f"n_atoms = {n_atoms!r} outside [1, {MAX_ATOMS}] or extras_len = {extras_len!r} "
            "negative"
        )
    return size


def encode_forceready(
    energy: float,
    forces,
    virial,
    extras: bytes | str = b"",
    out: bytearray | None = None,
) -> bytes | memoryview:
    """A complete FORCEREADY message (header included), ready for ``sendall``.

    ``energy``: eV; ``forces``: ``[N, 3]`` eV/Angstrom; ``virial``: ``[3, 3]``
    eV, written in C order exactly as given (no transpose: pass i-PI's
    convention, e.g. ``-stress * volume`` transposed as ``ipi/pes/_ase.py``
    does -- identical for a symmetric virial); ``extras``: JSON string (str is
    UTF-8 encoded) or b"". All are converted to atomic units.

    With ``out`` (a bytearray) the message is written into it, without
    allocation, and a ``memoryview`` of its first ``forceready_size(N,
    len(extras))`` bytes is returned; a too-small ``out`` is grown in place
    (or, when it cannot be resized because a view of it is still alive, a new
    buffer is used). Without ``out`` a new ``bytes`` object is returned.

    Raises ProtocolError for wrong shapes or non-finite values (garbage is
    never sent to i-PI).
    """
    if isinstance(extras, str):
        extras = extras.encode("utf-8")
    try:
        n = len(forces)
        need = _core.ipi_forceready_size(n, len(extras)) if 0 < n <= MAX_ATOMS else 0
        if out is None:
            buf = bytearray(need)
            _core.ipi_encode_forceready(energy, forces, virial, extras, buf)
            return bytes(buf)
        if len(out) < need:
            try:
                out.extend(bytes(need - len(out)))
            except (BufferError, AttributeError):  # a view of it is alive / not a bytearray
                out = bytearray(need)
        written = _core.ipi_encode_forceready(energy, forces, virial, extras, out)
        return memoryview(out)[:written]
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None


def decode_forceready(b, max_atoms: int = 10_000_000):
    """Decode a complete FORCEREADY message, header included (server side:
    tests and mock servers). ``b`` must be exactly the message.

    Returns ``(energy, forces, virial, extras)``: energy in eV, forces
    float64 ``[N, 3]`` eV/Angstrom, virial float64 ``[3, 3]`` eV (C order as
    sent), extras bytes.
    """
    try:
        return _core.ipi_decode_forceready(b, max_atoms)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(str(exc)) from None
