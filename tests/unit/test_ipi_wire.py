"""Tests of mlip_md.engines.ipi.wire (C++ i-PI socket codec) against i-PI 3.3.1's own code."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlip_md.engines.ipi import wire as w
from mlip_md.errors import ProtocolError

import ipi.interfaces.sockets as ipi_sockets  # noqa: E402  (i-PI is a core dependency: never skipped)
import ipi.utils.units as ipi_units  # noqa: E402
from ipi.pes._ase import ASEDriver  # noqa: E402
from ipi.utils.mathtools import abc2h, invert_ut3x3  # noqa: E402

B = w.BOHR_PER_ANGSTROM
HDR = w.HEADER_LEN


# ----------------------------------------------------------------------------
# helpers
def triclinic_cell(rng, scale=5.0):
    """A random, well-conditioned, NON-triangular cell (rows = lattice vectors, Angstrom)."""
    return scale * (np.eye(3) + 0.3 * rng.uniform(-1, 1, (3, 3)))


def split_posdata(msg: bytes):
    """(header, prefix, positions bytes) of a complete POSDATA message."""
    return msg[:HDR], msg[HDR : HDR + w.POSDATA_PREFIX_LEN], msg[HDR + w.POSDATA_PREFIX_LEN :]


def posdata_raw(h, ih, n, pos_bohr) -> bytes:
    """POSDATA exactly as i-PI's InterfaceSocket.sendpos builds it."""
    return (
        ipi_sockets.MESSAGE["posdata"]
        + np.ascontiguousarray(h, np.float64).tobytes()
        + np.ascontiguousarray(ih, np.float64).tobytes()
        + np.int32(n).tobytes()
        + np.ascontiguousarray(pos_bohr, np.float64).tobytes()
    )


def prefix_raw(h, ih=None, n=4) -> bytes:
    h = np.asarray(h, np.float64)
    ih = np.zeros((3, 3)) if ih is None else np.asarray(ih, np.float64)
    return h.tobytes() + ih.tobytes() + struct.pack("<i", n)


def forceready_raw(energy_au, forces_au, virial_au, extras: bytes, n=None) -> bytes:
    forces_au = np.asarray(forces_au, np.float64)
    n = len(forces_au) if n is None else n
    return (
        b"FORCEREADY  "
        + struct.pack("<d", energy_au)
        + struct.pack("<i", n)
        + forces_au.tobytes()
        + np.asarray(virial_au, np.float64).tobytes()
        + struct.pack("<i", len(extras))
        + extras
    )


def recv_exact(sock, n: int) -> bytes:
    """Exactly n bytes (MSG_WAITALL is not reliable on sockets with a timeout)."""
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += part
    return bytes(buf)


def expect(match: str):
    return pytest.raises(ProtocolError, match=match)


# ----------------------------------------------------------------------------
# constants and headers
def test_unit_constants_are_ipis():
    um = ipi_units.UnitMap
    assert w.BOHR_PER_ANGSTROM == um["length"]["angstrom"] == 1.8897261
    assert w.HARTREE_PER_EV == um["energy"]["electronvolt"] == 0.036749326
    assert w.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM == um["force"]["ev/ang"] == 0.019446904
    assert ipi_units.unit_to_internal("length", "angstrom", 1.0) == w.BOHR_PER_ANGSTROM
    assert ipi_units.unit_to_internal("energy", "electronvolt", 1.0) == w.HARTREE_PER_EV
    assert ipi_units.unit_to_internal("force", "ev/ang", 1.0) == (
        w.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM
    )
    assert (w.HEADER_LEN, w.INIT_PREFIX_LEN, w.POSDATA_PREFIX_LEN) == (12, 8, 148)


def test_headers_match_ipi():
    assert {m.name.lower() for m in w.Message} == set(ipi_sockets.MESSAGE)
    for m in w.Message:
        hdr = w.encode_header(m)
        assert hdr == ipi_sockets.MESSAGE[m.name.lower()] == m.header
        assert len(hdr) == HDR
        assert w.decode_header(hdr) is m
        assert w.decode_header(bytearray(hdr)) is m
        assert w.decode_header(memoryview(hdr)) is m
        assert w.encode_header(int(m)) == hdr
    with expect("unknown i-PI message kind"):
        w.encode_header(9)
    with expect("unknown i-PI message kind"):
        w.encode_header(-1)


def test_unknown_header_message_is_printable():
    with pytest.raises(ProtocolError) as err:
        w.decode_header(b"POS\x00\xffDATA\\'\n")
    msg = str(err.value)
    assert "unknown i-PI message header 'POS\\x00\\xffDATA\\\\\\'\\x0a'" in msg
    assert "POSDATA" in msg and msg.isprintable()
    # lower case / different padding are not accepted
    for bad in (b"posdata     ", b"     POSDATA", b"POSDATA\x00\x00\x00\x00\x00"):
        with expect("unknown i-PI message header"):
            w.decode_header(bad)


@pytest.mark.parametrize("n", [*range(HDR), HDR + 1, 100])
def test_truncated_header(n):
    with expect(f"truncated i-PI message header: got {n} bytes"):
        w.decode_header(b"STATUS      "[:n] + b"X" * max(0, n - HDR))


# ----------------------------------------------------------------------------
# INIT
def test_init_round_trip_and_errors():
    msg = w.encode_init(3, "mlip_md, seed:1")
    assert msg == b"INIT        " + struct.pack("<ii", 3, 15) + b"mlip_md, seed:1"
    assert w.decode_header(msg[:HDR]) is w.Message.INIT
    assert w.decode_init_prefix(msg[HDR : HDR + 8]) == (3, 15)
    assert w.decode_init_prefix(struct.pack("<ii", 0, 0)) == (0, 0)
    assert w.decode_init_prefix(struct.pack("<ii", 0, w.MAX_INIT_LEN)) == (0, w.MAX_INIT_LEN)
    with expect(r"init string length -1 outside \[0, 1048576\]"):
        w.decode_init_prefix(struct.pack("<ii", 0, -1))
    with expect("init string length 1048577 outside"):
        w.decode_init_prefix(struct.pack("<ii", 0, w.MAX_INIT_LEN + 1))
    with expect("init string length 2147483647 outside"):
        w.decode_init_prefix(struct.pack("<ii", 0, 2**31 - 1))
    with expect("negative replica index -5"):
        w.decode_init_prefix(struct.pack("<ii", -5, 3))
    for n in [*range(8), 9, 16]:
        with expect(f"INIT: truncated or oversized prefix: got {n} bytes, expected 8"):
            w.decode_init_prefix(bytes(n))
    with expect("negative replica index"):
        w.encode_init(-1, b"")
    with expect("more than 1048576"):
        w.encode_init(0, b"x" * (w.MAX_INIT_LEN + 1))


@pytest.mark.parametrize("pars", ["", "param: 1", '{"seed": 2}'])
def test_init_batch_size_as_ipi_announces_it(pars):
    """i-PI's own server code (batch_size > 1 in an <ffsocket>) appends 'batch_size:N' to the
    INIT string; init_batch_size finds it, with or without other parameters, and is 1 without."""
    for batch in (1, 4):
        a, b = socket.socketpair()
        a.settimeout(5)
        b.settimeout(5)
        try:
            drv = ipi_sockets.Driver(a)
            drv.batch_size = batch
            drv.status = ipi_sockets.Status.NeedsInit
            drv.initialize(0, pars)
            assert w.decode_header(recv_exact(b, HDR)) is w.Message.INIT
            _, length = w.decode_init_prefix(recv_exact(b, 8))
            init = recv_exact(b, length)
            assert w.init_batch_size(init) == batch, init
            assert w.init_batch_size(init.decode()) == batch
        finally:
            a.close()
            b.close()
    assert w.init_batch_size(b"mybatch_size:3") == 1  # a token of its own, not a suffix
    for bad in (b"batch_size:", b"batch_size:0", b"x, batch_size:-2", b"batch_size:two"):
        with expect("INIT: malformed token 'batch_size:"):
            w.init_batch_size(bad)


# ----------------------------------------------------------------------------
# POSDATA
def test_posdata_round_trip_and_units():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 108):
        cell = triclinic_cell(rng)
        pos = rng.uniform(-3, 8, (n, 3))
        msg = w.encode_posdata(cell, pos)
        assert len(msg) == w.posdata_size(n) == HDR + 148 + 24 * n
        hdr, prefix, body = split_posdata(msg)
        assert w.decode_header(hdr) is w.Message.POSDATA
        # wire content: i-PI's h = cell.T in Bohr (columns = lattice vectors), its inverse,
        # the count, positions in Bohr -- each multiplied exactly as unit_to_internal does
        h = np.frombuffer(prefix[:72]).reshape(3, 3)
        ih = np.frombuffer(prefix[72:144]).reshape(3, 3)
        np.testing.assert_array_equal(h, ipi_units.unit_to_internal("length", "angstrom", cell.T))
        np.testing.assert_allclose(ih @ h, np.eye(3), atol=1e-14)
        assert struct.unpack("<i", prefix[144:])[0] == n
        np.testing.assert_array_equal(
            np.frombuffer(body).reshape(n, 3), ipi_units.unit_to_internal("length", "angstrom", pos)
        )
        # decode back
        cell2, n2 = w.decode_posdata_prefix(prefix)
        assert n2 == n and cell2.shape == (3, 3) and cell2.dtype == np.float64
        np.testing.assert_allclose(cell2, cell, rtol=1e-15, atol=1e-15)
        np.testing.assert_array_equal(cell2, ipi_units.unit_to_user("length", "angstrom", h.T))
        pos2 = w.decode_positions(body, n)
        np.testing.assert_allclose(pos2, pos, rtol=1e-15, atol=1e-15)
        assert w.decode_posdata_prefix(prefix, expected_atoms=n, max_atoms=n)[1] == n


def test_decode_positions_fills_out_in_place():
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(5, 3))
    body = split_posdata(w.encode_posdata(np.eye(3) * 9, pos))[2]
    out = np.full((5, 3), np.nan)
    res = w.decode_positions(body, 5, out=out)
    assert res is out
    np.testing.assert_allclose(out, pos, rtol=1e-15, atol=1e-15)
    for bad in (np.zeros((4, 3)), np.zeros((5, 3), np.float32), np.zeros((3, 5)).T,
                np.zeros(15), [[0.0] * 3] * 5):
        with expect("out must"):
            w.decode_positions(body, 5, out=bad)
    ro = np.zeros((5, 3))
    ro.flags.writeable = False
    with pytest.raises(ProtocolError):
        w.decode_positions(body, 5, out=ro)


def test_cell_orientation_matches_ipi_and_its_ase_driver():
    """i-PI's h has the lattice vectors as COLUMNS; ASE (and this codec) as ROWS."""
    a, b, c = 7.0, 8.0, 9.5
    alpha, beta, gamma = np.radians([80.0, 95.0, 110.0])
    h = abc2h(a * B, b * B, c * B, alpha, beta, gamma)  # i-PI's own cell, upper triangular
    ih = invert_ut3x3(h)
    rng = np.random.default_rng(2)
    pos_bohr = rng.uniform(0, 10, (4, 3))
    msg = posdata_raw(h, ih, 4, pos_bohr)
    cell, n = w.decode_posdata_prefix(msg[HDR : HDR + 148], expected_atoms=4)
    pos = w.decode_positions(msg[HDR + 148 :], n)
    # exactly what i-PI's ASE driver hands to the ASE calculator
    ref_cell, ref_pos = ASEDriver.convert_units(None, h, pos_bohr)
    np.testing.assert_array_equal(cell, ref_cell)
    np.testing.assert_array_equal(pos, ref_pos)
    # the rows are the lattice vectors: lengths and angles as given to i-PI
    from ase.geometry import cell_to_cellpar

    np.testing.assert_allclose(
        cell_to_cellpar(cell), [a, b, c, 80.0, 95.0, 110.0], rtol=1e-12, atol=1e-10
    )
    assert abs(np.linalg.norm(cell[0]) - a) < 1e-12  # first ROW is a, along x
    np.testing.assert_allclose(cell[0, 1:], 0.0, atol=1e-15)


def test_posdata_wrong_atom_count():
    prefix = prefix_raw(np.eye(3) * 20, n=107)
    with expect(r"i-PI sent 107 atoms, the driver was initialised with 108: "):
        w.decode_posdata_prefix(prefix, expected_atoms=108)
    with expect(r"i-PI announced 107 atoms, more than max_atoms = 100"):
        w.decode_posdata_prefix(prefix, max_atoms=100)
    for n in (0, -1, -(2**31)):
        with expect(f"atom count {n} < 1"):
            w.decode_posdata_prefix(prefix_raw(np.eye(3), n=n))
    with expect("more than max_atoms"):
        w.decode_posdata_prefix(prefix_raw(np.eye(3), n=2**31 - 1))
    # invalid arguments
    with expect("max_atoms = 0 outside"):
        w.decode_posdata_prefix(prefix, max_atoms=0)
    with expect("max_atoms = 100000001 outside"):
        w.decode_posdata_prefix(prefix, max_atoms=w.MAX_ATOMS + 1)
    with expect("expected_atoms = 0"):
        w.decode_posdata_prefix(prefix, expected_atoms=0)
    with expect("does not fit an int32"):
        w.decode_posdata_prefix(prefix, max_atoms=2**40)


@pytest.mark.parametrize(
    "h",
    [
        np.zeros((3, 3)),
        np.diag([10.0, 10.0, 0.0]),
        [[10.0, 10.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 10.0]],  # a == b
        [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0 + 1e-13], [0.0, 1.0, 5.0]],  # nearly singular
    ],
)
def test_posdata_zero_volume_cell(h):
    with expect("POSDATA: the cell has zero volume"):
        w.decode_posdata_prefix(prefix_raw(h))
    with expect("the cell has zero volume"):
        w.encode_posdata(np.asarray(h).T, np.zeros((1, 3)))


def test_posdata_non_finite_and_huge_cell():
    for k in range(18):
        vals = np.concatenate([np.eye(3).ravel(), np.eye(3).ravel()])
        vals[k] = [np.nan, np.inf, -np.inf][k % 3]
        prefix = vals.tobytes() + struct.pack("<i", 1)
        what = "cell" if k < 9 else "inverse cell"
        with expect(rf"non-finite value .* in the {what} \(entry \[{k % 9 // 3}\]\[{k % 3}\]\)"):
            w.decode_posdata_prefix(prefix)
    with expect("too large"):
        w.decode_posdata_prefix(prefix_raw(np.eye(3) * 1e200))


def test_positions_errors():
    good = (np.arange(12.0) * B).tobytes()
    np.testing.assert_allclose(w.decode_positions(good, 4).ravel(), np.arange(12.0), rtol=1e-15)
    for k in range(12):
        for bad in (np.nan, np.inf, -np.inf):
            arr = np.arange(12.0)
            arr[k] = bad
            with expect(rf"non-finite position of atom {k // 3} \(coordinate {k % 3}"):
                w.decode_positions(arr.tobytes(), 4)
    for n in [*range(96), 97, 120]:
        with expect(rf"got {n} bytes of positions, expected 96 \(3 float64 for each of 4 atoms\)"):
            w.decode_positions(good[:n] + bytes(max(0, n - 96)), 4)
    for n in (0, -3):
        with expect(f"n_atoms = {n} outside"):
            w.decode_positions(b"", n)
    with expect("does not fit an int32"):
        w.decode_positions(good, 2**33)


@pytest.mark.parametrize("n", [*range(148), 149, 300])
def test_truncated_posdata_prefix(n):
    full = prefix_raw(np.eye(3) * 10, np.eye(3) / 10, 4)
    with expect(f"POSDATA: truncated or oversized prefix: got {n} bytes, expected 148"):
        w.decode_posdata_prefix((full + bytes(200))[:n])


def test_encode_posdata_errors():
    with expect(r"positions must have shape \[N, 3\]"):
        w.encode_posdata(np.eye(3), np.zeros((0, 3)))
    with expect(r"positions must have shape \[N, 3\]"):
        w.encode_posdata(np.eye(3), np.zeros((2, 2)))
    with expect(r"cell must have shape \[3, 3\]"):
        w.encode_posdata(np.eye(2), np.zeros((2, 3)))
    with expect(r"non-finite position of atom 1 \(coordinate 2"):
        w.encode_posdata(np.eye(3), [[0, 0, 0], [0, 0, np.nan]])
    with expect(r"too large position of atom 0"):
        w.encode_posdata(np.eye(3), [[1e308, 0, 0]])
    with expect(r"non-finite cell entry \[1\]\[0\]"):
        w.encode_posdata([[1, 0, 0], [np.inf, 1, 0], [0, 0, 1]], np.zeros((1, 3)))


# ----------------------------------------------------------------------------
# FORCEREADY
def test_forceready_round_trip_and_units():
    rng = np.random.default_rng(3)
    for n, extras in ((1, b""), (3, b'{"dipole": [0.1, 0.2, 0.3]}'), (64, "{}")):
        e = float(rng.normal() * 100)
        f = rng.normal(size=(n, 3))
        vir = rng.normal(size=(3, 3))  # NOT symmetric: C order must be kept as given
        msg = w.encode_forceready(e, f, vir, extras)
        xb = extras.encode() if isinstance(extras, str) else extras
        assert isinstance(msg, bytes) and len(msg) == w.forceready_size(n, len(xb))
        # byte-exact against i-PI's unit conversion and its driver's layout
        ref = forceready_raw(
            ipi_units.unit_to_internal("energy", "electronvolt", e),
            ipi_units.unit_to_internal("force", "ev/ang", f),
            ipi_units.unit_to_internal("energy", "electronvolt", vir),
            xb,
        )
        assert msg == ref
        e2, f2, v2, x2 = w.decode_forceready(msg)
        assert math.isclose(e2, e, rel_tol=1e-15, abs_tol=1e-300)
        np.testing.assert_allclose(f2, f, rtol=1e-15, atol=1e-300)
        np.testing.assert_allclose(v2, vir, rtol=1e-15, atol=1e-300)
        assert x2 == xb and f2.shape == (n, 3) and v2.shape == (3, 3)


def test_encode_forceready_reuses_out():
    f = np.ones((4, 3))
    vir = np.eye(3)
    need = w.forceready_size(4, 2)
    out = bytearray(need + 100)
    mv = w.encode_forceready(1.0, f, vir, b"{}", out=out)
    assert isinstance(mv, memoryview) and mv.obj is out and len(mv) == need
    assert bytes(mv) == w.encode_forceready(1.0, f, vir, b"{}")
    del mv
    # too small: grown in place
    small = bytearray(10)
    mv = w.encode_forceready(2.0, f, vir, b"", out=small)
    assert mv.obj is small and len(small) == w.forceready_size(4, 0)
    # cannot be resized while a view is alive: falls back to a new buffer
    mv2 = w.encode_forceready(2.0, f, vir, b'{"a": 1}', out=small)
    assert mv2.obj is not small and bytes(mv2) == w.encode_forceready(2.0, f, vir, b'{"a": 1}')
    assert w.decode_forceready(mv2)[3] == b'{"a": 1}'


def test_encode_forceready_errors():
    f = np.zeros((3, 3))
    vir = np.zeros((3, 3))
    with expect(r"non-finite energy nan eV"):
        w.encode_forceready(np.nan, f, vir)
    with expect(r"non-finite energy inf eV"):
        w.encode_forceready(1e308 * 100, f, vir)
    for k in range(9):
        bad = f.copy()
        bad[k // 3, k % 3] = np.nan
        with expect(rf"non-finite force on atom {k // 3} \(component {k % 3} = nan"):
            w.encode_forceready(0.0, bad, vir)
        badv = vir.copy()
        badv[k // 3, k % 3] = np.inf
        with expect(rf"non-finite virial entry \[{k // 3}\]\[{k % 3}\] = inf"):
            w.encode_forceready(0.0, f, badv)
    with expect(r"forces must have shape \[N, 3\]"):
        w.encode_forceready(0.0, np.zeros((0, 3)), vir)
    with expect(r"forces must have shape \[N, 3\]"):
        w.encode_forceready(0.0, np.zeros(9), vir)
    with expect(r"virial must have shape \[3, 3\]"):
        w.encode_forceready(0.0, f, np.zeros(9))
    with expect("outside"):
        w.forceready_size(0, 0)
    with expect("outside"):
        w.forceready_size(3, -1)


def test_decode_forceready_errors():
    f = np.ones((2, 3))
    good = w.encode_forceready(1.0, f, np.eye(3), b"{}")
    for n in range(len(good)):
        with pytest.raises(ProtocolError, match="FORCEREADY: (truncated|message of)"):
            w.decode_forceready(good[:n])
    with expect(r"FORCEREADY: message of 151 bytes, expected 150 for 2 atoms and 2 bytes"):
        w.decode_forceready(good + b"x")
    with expect(r"wrong header 'FORCEREADY\\x00 '"):
        w.decode_forceready(b"FORCEREADY\x00 " + good[HDR:])
    with expect(r"atom count 3 outside \[1, max_atoms = 2\]"):
        w.decode_forceready(forceready_raw(0.0, np.zeros((3, 3)), np.eye(3), b""), max_atoms=2)
    with expect(r"atom count -1 outside"):
        w.decode_forceready(forceready_raw(0.0, np.zeros((0, 3)), np.eye(3), b"", n=-1))
    neg = bytearray(good)
    neg[HDR + 12 + 48 + 72 : HDR + 12 + 48 + 76] = struct.pack("<i", -2)
    with expect("negative extras length -2"):
        w.decode_forceready(bytes(neg[:-2]))
    with expect(r"non-finite force on atom 1 \(component 0"):
        w.decode_forceready(forceready_raw(0.0, [[0, 0, 0], [np.nan, 0, 0]], np.eye(3), b""))
    with expect(r"non-finite energy"):
        w.decode_forceready(forceready_raw(1e307, f, np.eye(3), b""))  # overflows in eV


# ----------------------------------------------------------------------------
# against i-PI's own server-side socket code (ipi.interfaces.sockets.Driver)
def test_against_ipi_server_socket_code():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    try:
        drv = ipi_sockets.Driver(a)
        drv.settimeout(5)
        # INIT
        drv.status = ipi_sockets.Status.NeedsInit
        drv.initialize(2, "param: 1")
        assert w.decode_header(recv_exact(b, HDR)) is w.Message.INIT
        idx, length = w.decode_init_prefix(recv_exact(b, 8))
        assert (idx, length) == (2, 8) and recv_exact(b, length) == b"param: 1"
        # POSDATA
        rng = np.random.default_rng(4)
        n = 10
        h = abc2h(12.0, 13.0, 14.0, 1.4, 1.6, 1.9)
        pos = rng.uniform(0, 12, 3 * n)  # i-PI's flat Bohr array
        drv.status = ipi_sockets.Status.Up | ipi_sockets.Status.Ready
        drv.sendpos(pos, (h, invert_ut3x3(h)))
        assert w.decode_header(recv_exact(b, HDR)) is w.Message.POSDATA
        cell, nat = w.decode_posdata_prefix(recv_exact(b, 148), expected_atoms=n)
        out = np.empty((n, 3))
        w.decode_positions(recv_exact(b, 24 * n), nat, out=out)
        np.testing.assert_array_equal(cell, h.T / B)
        np.testing.assert_array_equal(out, pos.reshape(n, 3) / B)
        # FORCEREADY parsed by i-PI's receiver
        e = -123.456
        f = rng.normal(size=(n, 3))
        vir = rng.normal(size=(3, 3))
        extras = json.dumps({"dipole": [1.0, 2.0, 3.0]})
        buf = bytearray()
        b.sendall(w.encode_forceready(e, f, vir, extras, out=buf))
        mu, mf, mvir, mx = drv._recv_forces_bulk(n)
        assert mu == ipi_units.unit_to_internal("energy", "electronvolt", e)
        np.testing.assert_array_equal(mf, ipi_units.unit_to_internal("force", "ev/ang", f).ravel())
        np.testing.assert_array_equal(mvir, ipi_units.unit_to_internal("energy", "electronvolt", vir))
        assert mx["dipole"] == [1.0, 2.0, 3.0] and mx["raw"] == extras
        drv.close()
    finally:
        a.close()
        b.close()


def _load_ipi_driver_py():
    path = shutil.which("i-pi-driver-py") or str(Path(sys.executable).parent / "i-pi-driver-py")
    if not os.path.exists(path):
        pytest.skip("i-pi-driver-py not installed")
    loader = importlib.machinery.SourceFileLoader("_ipi_driver_py", path)
    spec = importlib.util.spec_from_loader("_ipi_driver_py", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_mock_server_against_ipi_driver_py_with_ase_driver():
    """Our server-side encoders drive i-PI's reference client (i-pi-driver-py's run_driver)
    with its ASE PES (ipi/pes/_ase.py, EMT); our decoders read the answers."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    mod = _load_ipi_driver_py()
    template = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    seen = {}

    class RecordingEMT(ASEDriver):
        def check_parameters(self):
            self.template_ase = template.copy()
            self.ase_calculator = EMT()

        def compute_structure(self, cell, pos):
            res = super().compute_structure(cell, pos)
            seen["cell"], seen["pos"] = self.convert_units(cell, pos)
            return res

    driver = RecordingEMT(template=None)
    rng = np.random.default_rng(5)
    cell = template.cell.array @ (np.eye(3) + 0.02 * rng.uniform(-1, 1, (3, 3)))
    pos = template.positions + 0.05 * rng.normal(size=template.positions.shape)
    n = len(template)

    tmp = tempfile.mkdtemp(prefix="ipiw")
    try:
        address = os.path.join(tmp, "sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(address)
        srv.listen(1)
        srv.settimeout(10)
        errors = []

        def client():
            try:
                mod.run_driver(unix=True, address="sock", driver=driver,
                               sockets_prefix=tmp + os.sep)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        th = threading.Thread(target=client, daemon=True)
        th.start()
        conn, _ = srv.accept()
        conn.settimeout(10)

        def status():
            conn.sendall(w.encode_header(w.Message.STATUS))
            return w.decode_header(recv_exact(conn, HDR))

        assert status() is w.Message.NEEDINIT
        conn.sendall(w.encode_init(0, ""))
        assert status() is w.Message.READY
        conn.sendall(w.encode_posdata(cell, pos))
        assert status() is w.Message.HAVEDATA
        conn.sendall(w.encode_header(w.Message.GETFORCE))
        assert w.decode_header(recv_exact(conn, HDR)) is w.Message.FORCEREADY
        head = recv_exact(conn, 12)
        nat = struct.unpack("<i", head[8:])[0]
        assert nat == n
        rest = recv_exact(conn, 24 * nat + 72 + 4)
        nx = struct.unpack("<i", rest[-4:])[0]
        extras = recv_exact(conn, nx) if nx else b""
        energy, forces, virial, x = w.decode_forceready(b"FORCEREADY  " + head + rest + extras)
        conn.sendall(w.encode_header(w.Message.EXIT))
        th.join(10)
        conn.close()
        srv.close()
        assert not errors and not th.is_alive()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # what the ASE driver saw: our cell rows / positions (to 1 ulp of the unit round trip)
    np.testing.assert_allclose(seen["cell"], cell, rtol=1e-15, atol=1e-14)
    np.testing.assert_allclose(seen["pos"], pos, rtol=1e-15, atol=1e-14)
    # what it computed, back in eV units
    ref = template.copy()
    ref.cell[:] = seen["cell"]
    ref.positions[:] = seen["pos"]
    ref.calc = EMT()
    assert math.isclose(energy, ref.get_potential_energy(), rel_tol=1e-14)
    np.testing.assert_allclose(forces, ref.get_forces(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(
        virial, (-ref.get_stress(voigt=False) * ref.get_volume()).T, rtol=1e-12, atol=1e-12
    )
    x = json.loads(x)  # ASE's extra properties, as i-PI's ASE driver sends them
    assert math.isclose(x["free_energy"], ref.get_potential_energy(force_consistent=True),
                        rel_tol=1e-14)


# ----------------------------------------------------------------------------
# fuzzing: every decoder either returns a valid result or raises ProtocolError
def _check_decoders(data: bytes, n_hint: int):
    try:
        m = w.decode_header(data)
        assert isinstance(m, w.Message) and data == m.header
    except ProtocolError:
        pass
    try:
        idx, length = w.decode_init_prefix(data)
        assert len(data) == 8 and idx >= 0 and 0 <= length <= w.MAX_INIT_LEN
    except ProtocolError:
        pass
    for expected in (-1, n_hint):
        try:
            cell, n = w.decode_posdata_prefix(data, expected_atoms=expected, max_atoms=1000)
            assert len(data) == 148 and 1 <= n <= 1000 and expected in (-1, n)
            assert cell.shape == (3, 3) and np.isfinite(cell).all()
            assert abs(np.linalg.det(cell)) > 0
        except ProtocolError:
            pass
    try:
        pos = w.decode_positions(data, n_hint)
        assert len(data) == 24 * n_hint and pos.shape == (n_hint, 3) and np.isfinite(pos).all()
    except ProtocolError:
        pass
    try:
        e, f, v, x = w.decode_forceready(data, max_atoms=1000)
        assert math.isfinite(e) and np.isfinite(f).all() and np.isfinite(v).all()
        assert 1 <= len(f) <= 1000 and len(data) == w.forceready_size(len(f), len(x))
    except ProtocolError:
        pass


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@_FUZZ
@given(st.binary(max_size=400), st.integers(1, 20))
def test_fuzz_random_bytes(data, n_hint):
    _check_decoders(data, n_hint)


@st.composite
def valid_messages(draw):
    n = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["posdata", "forceready", "init", "header"]))
    if kind == "posdata":
        msg = w.encode_posdata(triclinic_cell(rng), rng.normal(size=(n, 3)))
    elif kind == "forceready":
        extras = draw(st.binary(max_size=20))
        msg = w.encode_forceready(rng.normal(), rng.normal(size=(n, 3)),
                                  rng.normal(size=(3, 3)), extras)
    elif kind == "init":
        msg = w.encode_init(draw(st.integers(0, 2**31 - 1)), draw(st.binary(max_size=20)))
    else:
        msg = draw(st.sampled_from(list(w.Message))).header
    return n, msg


@_FUZZ
@given(valid_messages(), st.data())
def test_fuzz_mutated_messages(n_msg, data):
    n, msg = n_msg
    msg = bytearray(msg)
    for _ in range(data.draw(st.integers(0, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "truncate", "extend", "int32"]))
        if op == "flip" and msg:
            i = data.draw(st.integers(0, len(msg) - 1))
            msg[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and msg:
            i = data.draw(st.integers(0, len(msg) - 1))
            msg[i] = data.draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0xF0]))
        elif op == "truncate":
            del msg[data.draw(st.integers(0, len(msg))):]
        elif op == "extend":
            msg += data.draw(st.binary(min_size=1, max_size=30))
        elif op == "int32" and len(msg) >= 4:
            i = data.draw(st.integers(0, len(msg) - 4))
            v = data.draw(st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31), 7, 10**6]))
            msg[i : i + 4] = struct.pack("<i", v)
    msg = bytes(msg)
    # whole message and every natural slice
    _check_decoders(msg, n)
    _check_decoders(msg[HDR:], n)
    _check_decoders(msg[HDR : HDR + 148], n)
    _check_decoders(msg[HDR + 148 :], n)
    _check_decoders(msg[:HDR], n)


@_FUZZ
@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=12),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=9, max_size=9),
)
def test_fuzz_encoders_round_trip_or_refuse(e, flat, vir):
    f = np.asarray(flat[: len(flat) // 3 * 3]).reshape(-1, 3)
    v = np.asarray(vir).reshape(3, 3)
    try:
        msg = w.encode_forceready(e, f, v)
    except ProtocolError:
        with np.errstate(over="ignore", invalid="ignore"):
            ok = (
                np.isfinite(e * w.HARTREE_PER_EV)
                and np.isfinite(f * w.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM).all()
                and np.isfinite(v * w.HARTREE_PER_EV).all()
            )
        assert not ok or len(f) == 0
        return
    # bit-exact: multiplied by i-PI's constant on encode, divided on decode
    kf, ke = w.HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM, w.HARTREE_PER_EV
    e2, f2, v2, _ = w.decode_forceready(msg)
    assert e2 == (e * ke) / ke
    np.testing.assert_array_equal(f2, (f * kf) / kf)
    np.testing.assert_array_equal(v2, (v * ke) / ke)
    try:
        msg = w.encode_posdata(np.eye(3) * 10, f)
    except ProtocolError:
        with np.errstate(over="ignore"):
            assert not np.isfinite(f * B).all()
        return
    np.testing.assert_array_equal(w.decode_positions(msg[HDR + 148 :], len(f)), (f * B) / B)
