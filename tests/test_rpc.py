"""Llama(rpc_servers=[...]): layers on ggml-rpc-server processes (llama.cpp's RPC backend).

A server on loopback runs this build's CPU backend, so weights and the rotor KV cache
live, and attention runs, in that process; what comes back is what runs here.  An endpoint
reaches llama.cpp's client (which aborts the process on a failed connection) only after
rotorquant has talked to it itself.
"""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from rotorquant import Llama, RpcError, rpc
from rotorquant._native import BIN_DIR

PROMPT = "The capital of France is"
KW = dict(n_ctx=512, cache_type_k="iso3", cache_type_v="iso3", n_threads=2, seed=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_server():
    port = free_port()
    proc = start_server(port)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_a_model_on_an_rpc_server_generates_what_it_generates_here(smollm2_model, rpc_server):
    with Llama(smollm2_model, n_gpu_layers=99, rpc_servers=[rpc_server], **KW) as llm:
        remote = llm.generate(PROMPT, max_tokens=24, temperature=0)
        where = llm.memory_bytes(by_device=True)
    with Llama(smollm2_model, **KW) as llm:
        local = llm.generate(PROMPT, max_tokens=24, temperature=0)
    assert remote == local
    (server,) = [name for name in where if name.startswith("RPC")]
    assert where[server]["model"] > 0 and where[server]["kv"] > 0  # weights and iso3 cache there


def test_a_model_split_over_two_servers_generates_what_it_generates_here(smollm2_model, rpc_server):
    second = start_server(port := free_port())
    try:
        with Llama(smollm2_model, n_gpu_layers=99, rpc_servers=[rpc_server, f"127.0.0.1:{port}"], **KW) as llm:
            split = llm.generate(PROMPT, max_tokens=24, temperature=0)
            where = llm.memory_bytes(by_device=True)
    finally:
        second.terminate()
        second.wait(timeout=10)
    with Llama(smollm2_model, **KW) as llm:
        local = llm.generate(PROMPT, max_tokens=24, temperature=0)
    assert split == local
    servers = sorted(name for name in where if name.startswith("RPC"))
    assert len(servers) == 2 and all(where[s]["model"] > 0 and where[s]["kv"] > 0 for s in servers)


def test_a_later_model_without_rpc_servers_keeps_its_layers_here(smollm2_model, rpc_server):
    with Llama(smollm2_model, n_gpu_layers=99, rpc_servers=[rpc_server], **KW):
        pass
    with Llama(smollm2_model, n_gpu_layers=99, **KW) as llm:
        assert not any(name.startswith("RPC") for name in llm.memory_bytes(by_device=True))


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([os.path.join(BIN_DIR, "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port), "-t", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:  # a connection that is closed at once is all the server sees of this
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("ggml-rpc-server did not start")
            time.sleep(0.1)


def test_a_server_that_died_since_its_last_use_is_a_clear_error(tiny_model):
    """llama.cpp's client connects again for each model and aborts the process if it
    cannot; an endpoint no model uses is probed again first.  (In a child process: were
    it the abort, only the child would die.)"""
    script = f"""
import subprocess, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_rpc import free_port, start_server
from rotorquant import Llama, RpcError
port = free_port()
server = start_server(port)
Llama({str(tiny_model)!r}, n_gpu_layers=99, rpc_servers=[f"127.0.0.1:{{port}}"]).close()
server.kill(); server.wait()
try:
    Llama({str(tiny_model)!r}, n_gpu_layers=99, rpc_servers=[f"127.0.0.1:{{port}}"])
except RpcError as exc:
    print("RpcError:", exc)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RpcError: RPC server 127.0.0.1:" in proc.stdout and "cannot connect" in proc.stdout


def test_a_server_killed_mid_generation_is_a_clear_error_and_the_process_lives_on(smollm2_model):
    """Upstream's client aborts when a server it is using goes away; patch 0009 records the
    loss instead, and the next decode raises DecodeError naming the server.  (In a child
    process, for the same reason as above.)"""
    script = f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_rpc import KW, free_port, start_server
from rotorquant import DecodeError, Llama
port = free_port()
server = start_server(port)
llm = Llama({str(smollm2_model)!r}, n_gpu_layers=99, rpc_servers=[f"127.0.0.1:{{port}}"], **KW)
chunks = llm.create_completion("Once upon a time", max_tokens=200, temperature=0, stream=True)
try:
    for i, _ in enumerate(chunks):
        if i == 3:
            server.kill()
            server.wait()
        if i > 50:
            print("no error after the server died")
            break
except DecodeError as exc:
    print("DecodeError:", exc)
llm.close()
print("closed")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-2000:])
    assert "DecodeError: RPC server 127.0.0.1:" in proc.stdout and "was lost during a decode" in proc.stdout
    assert proc.stdout.rstrip().endswith("closed")


def test_an_unreachable_server_is_a_clear_error(tiny_model):
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RpcError, match=f"{endpoint}: cannot connect"):
        Llama(tiny_model, rpc_servers=[endpoint])


def serve_once(reply: bytes) -> str:
    """A TCP server on loopback that answers its first client with `reply` and closes."""
    sock = socket.create_server(("127.0.0.1", 0))

    def answer():
        conn, _ = sock.accept()
        with conn, sock:
            conn.recv(64)
            conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    return f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_server_of_another_protocol_version_is_refused(tiny_model):
    hello_of_v6 = (28).to_bytes(8, "little") + bytes([6, 0, 0, 0]) + bytes(24)
    with pytest.raises(RpcError, match="speaks protocol 6.0.0; this build speaks 7"):
        Llama(tiny_model, rpc_servers=[serve_once(hello_of_v6)])


def test_a_server_of_another_build_is_refused_before_any_tensor_travels(tiny_model):
    """An upstream server speaks the same protocol but not our type table (it hangs up on
    the command that asks for it): rotor cache type ids would mean nothing there."""
    hello_of_v7 = (28).to_bytes(8, "little") + bytes([7, 0, 0, 0]) + bytes(24)
    with pytest.raises(RpcError, match="not a rotorquant build"):
        Llama(tiny_model, rpc_servers=[serve_once(hello_of_v7)])


def test_something_that_is_not_an_rpc_server_is_refused(tiny_model):
    with pytest.raises(RpcError, match="is it an RPC server"):
        Llama(tiny_model, rpc_servers=[serve_once(b"HTTP/1.1 400 Bad Request\r\n\r\n")])


@pytest.mark.parametrize("servers", [["localhost"], ["host:0"], ["host:65536"], [":50052"], ["host:port"],
                                     ["::1:50052"], ["a:1", "a:1"], "a:1", [], [50052]])
def test_malformed_rpc_servers_are_refused_before_any_connection(tiny_model, servers):
    with pytest.raises(ValueError):
        Llama(tiny_model, rpc_servers=servers)


def test_endpoints_parse_as_the_client_reads_them():
    assert rpc.parse_endpoint("192.168.1.7:50052") == ("192.168.1.7", 50052)
    assert rpc.parse_endpoint("gpu-box.local:1") == ("gpu-box.local", 1)
