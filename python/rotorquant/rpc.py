"""llama.cpp's RPC backend: the devices of ``ggml-rpc-server`` processes, by endpoint.

``Llama(rpc_servers=["host:port", ...])`` places layers on other machines (each server
offers its own devices: CPU, or its GPUs).  Upstream's client aborts the process when an
endpoint does not parse, cannot be reached or answers with another protocol version, so
an endpoint reaches C only after this module has connected to it itself, read the
server's answer to the protocol's HELLO, and compared the server's ggml type table with
this build's (patch 0008: the rotor cache type ids travel in every tensor, and a server
of another build would read them as other types or refuse them): a clear
:class:`~rotorquant.errors.RpcError` instead of a dead interpreter or garbage.

Registering a server is for the life of the process (llama.cpp keeps a registry of
backends); which devices a model uses is decided per load (:func:`model_devices`), so a
later ``Llama`` without ``rpc_servers`` does not use servers an earlier one added.  The
client keeps a connection only while a model uses the server and connects again for the
next one, so an endpoint nobody uses is probed again before it is used again (a server
that died meanwhile is an RpcError, not an abort); one in use is not (a server serves one
client at a time, and this process is that client).
"""
from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence

from ._native import ffi, lib
from .errors import RpcError

# Wire constants of ggml-rpc, which are not in its public header: the HELLO command byte
# (fixed by the protocol: "RPC_CMD_HELLO must be always 14"), the size of the transport
# capability block (transport.h; all zero = a plain TCP client), and the command patch
# 0008 adds after upstream's, which answers a digest of the server's ggml type table.
_CMD_HELLO = 14
_CAPS_SIZE = 24
_CMD_RQ_TYPE_TABLE = 18
_PROBE_TIMEOUT_S = 5.0

_registered: dict[str, list] = {}  # endpoint -> its devices (ggml_backend_dev_t)
_in_use: dict[str, int] = {}       # endpoint -> models (or plans) using it now
_lock = threading.Lock()


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); a ValueError names what is wrong."""
    if not isinstance(endpoint, str):
        raise ValueError(f"an RPC server is 'host:port', not {endpoint!r}")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an RPC server is 'host:port' with a port in 1..65535, not {endpoint!r}")
    if ":" in host:
        raise ValueError(f"RPC server {endpoint!r}: llama.cpp's client takes a host name or an IPv4 "
                         "address (the first ':' ends the host)")
    return host, int(port)


class _BadAnswer(Exception):
    """The peer answered something that is not the protocol's answer (or hung up)."""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise _BadAnswer("connection closed")
        data += chunk
    return data


def type_table_digest() -> int:
    """This build's digest of the ggml type table (what a server of the same build answers)."""
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    fn = lib.ggml_backend_reg_get_proc_address(reg, b"rq_rpc_type_table_digest") if reg != ffi.NULL else ffi.NULL
    if fn == ffi.NULL:
        raise RpcError("this build has no RPC backend (or not rotorquant's)")
    return int(ffi.cast("uint64_t (*)(void)", fn)())


def take_failure() -> str | None:
    """The endpoint of an RPC server lost since the last call (patch 0009: llama.cpp's
    client then stops sending to it and its graph computes fail), or None."""
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    fn = lib.ggml_backend_reg_get_proc_address(reg, b"rq_rpc_take_failure") if reg != ffi.NULL else ffi.NULL
    if fn == ffi.NULL:
        return None
    buf = ffi.new("char[]", 256)
    if not ffi.cast("bool (*)(char *, size_t)", fn)(buf, 256):
        return None
    return ffi.string(buf).decode()


def _ask(sock: socket.socket, cmd: int, payload: bytes) -> bytes:
    sock.sendall(bytes([cmd]) + struct.pack("<Q", len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exactly(sock, 8))
    if size > 4096:
        raise _BadAnswer(f"an answer of {size} bytes")
    return _recv_exactly(sock, size)


def probe(endpoint: str, timeout: float = _PROBE_TIMEOUT_S) -> tuple[int, int, int]:
    """Connect to an RPC server, check that it speaks this build's protocol version and
    has this build's ggml type table (so that the rotor cache types mean the same there),
    and return its version (major, minor, patch); RpcError naming what is wrong otherwise."""
    host, port = parse_endpoint(endpoint)
    stage = "HELLO"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            hello = _ask(sock, _CMD_HELLO, bytes(_CAPS_SIZE))
            if len(hello) < 3:
                raise _BadAnswer(f"{len(hello)} bytes")
            major, minor, patch = hello[:3]
            if major != lib.RPC_PROTO_MAJOR_VERSION or minor > lib.RPC_PROTO_MINOR_VERSION:
                raise RpcError(f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}; this build speaks "
                               f"{lib.RPC_PROTO_MAJOR_VERSION}.{lib.RPC_PROTO_MINOR_VERSION}: use the same "
                               "rotorquant build on both ends")
            stage = "the type table"
            table = _ask(sock, _CMD_RQ_TYPE_TABLE, b"")
            if len(table) != 16:
                raise _BadAnswer(f"{len(table)} bytes")
            digest, n_types = struct.unpack("<QQ", table)
    except socket.timeout:
        raise RpcError(f"RPC server {endpoint}: no answer to {stage} within {timeout:g} s (busy with "
                       "another client, or not an RPC server)") from None
    except (_BadAnswer, OSError) as exc:
        if stage == "HELLO" and isinstance(exc, OSError):
            raise RpcError(f"RPC server {endpoint}: cannot connect ({exc.strerror or exc})") from None
        if stage == "HELLO":
            raise RpcError(f"RPC server {endpoint}: a bad answer to HELLO ({exc}); is it an RPC server?") from None
        # an upstream server closes the connection on a command it does not know
        raise RpcError(f"RPC server {endpoint} does not report its ggml type table: it is not a rotorquant "
                       "build, and its types would not match ours (the rotor cache types); run `rq-run "
                       "rpc-server` of this build there") from None
    if digest != type_table_digest() or n_types != lib.GGML_TYPE_COUNT:
        raise RpcError(f"RPC server {endpoint} has another ggml type table ({n_types} types) than this "
                       f"build ({lib.GGML_TYPE_COUNT}): use the same rotorquant build on both ends")
    return major, minor, patch


def add_servers(endpoints: Sequence[str]) -> list:
    """Probe (unless in use) and register each server once per process; count it as in use
    until :func:`release`; return their devices in order."""
    if isinstance(endpoints, str) or not isinstance(endpoints, Sequence) or not endpoints:
        raise ValueError(f"rpc_servers must be a non-empty list of 'host:port', not {endpoints!r}")
    for ep in endpoints:
        parse_endpoint(ep)
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"rpc_servers lists a server twice: {list(endpoints)}")
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    fn = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server") if reg != ffi.NULL else ffi.NULL
    if fn == ffi.NULL:
        raise RpcError("this build has no RPC backend")
    add = ffi.cast("ggml_backend_reg_t (*)(const char *)", fn)
    with _lock:
        for ep in endpoints:
            if not _in_use.get(ep):
                probe(ep)
            if ep not in _registered:
                server = add(ep.encode())
                if server == ffi.NULL:
                    raise RpcError(f"RPC server {ep} offers no devices")
                lib.ggml_backend_register(server)
                _registered[ep] = [lib.ggml_backend_reg_dev_get(server, i)
                                   for i in range(lib.ggml_backend_reg_dev_count(server))]
        devices = []
        for ep in endpoints:
            _in_use[ep] = _in_use.get(ep, 0) + 1
            devices += _registered[ep]
    return devices


def release(endpoints: Sequence[str]) -> None:
    """The model (or plan) that :func:`add_servers` counted no longer uses these servers."""
    with _lock:
        for ep in endpoints:
            if _in_use.get(ep):
                _in_use[ep] -= 1


def model_devices(rpc_devices: Sequence) -> object:
    """The NULL-terminated device list for ``llama_model_params.devices``: the given RPC
    devices first (llama.cpp's own order: fewer transfers), then this machine's GPUs (its
    integrated GPUs where it has no discrete one).  ``ffi.NULL`` (llama.cpp's default
    choice) when no RPC server is registered in this process."""
    if not rpc_devices and not _registered:
        return ffi.NULL
    local = {lib.GGML_BACKEND_DEVICE_TYPE_GPU: [], lib.GGML_BACKEND_DEVICE_TYPE_IGPU: []}
    rpc_reg = lib.ggml_backend_reg_by_name(b"RPC")
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)
        if kind in local and lib.ggml_backend_dev_backend_reg(dev) != rpc_reg:
            local[kind].append(dev)
    chosen = list(rpc_devices) + (local[lib.GGML_BACKEND_DEVICE_TYPE_GPU] or local[lib.GGML_BACKEND_DEVICE_TYPE_IGPU])
    return ffi.new("ggml_backend_dev_t[]", chosen + [ffi.NULL])
