"""rq-run checks a tool's arguments before starting it (tool_args.prepare)."""
import socket

import pytest

from rotorquant.cli.tool_args import ToolArgsError, prepare


def test_arguments_pass_through_unchanged_when_nothing_applies():
    args = ["-m", "x.gguf", "-p", "hi", "-n", "4"]
    assert prepare("cli", args) == args
    assert prepare("quantize", ["a.gguf", "b.gguf", "Q4_K_M"]) == ["a.gguf", "b.gguf", "Q4_K_M"]


@pytest.mark.parametrize("args", [["-ctk", "q3_0"], ["--cache-type-v=nope"], ["-ctkd", "x"]])
def test_unknown_cache_type_is_refused_with_the_valid_names(args):
    with pytest.raises(ToolArgsError, match="valid types: f32, f16"):
        prepare("cli", args)


def test_llama_bench_cache_type_lists_are_checked_item_by_item():
    assert prepare("bench", ["-ctk", "f16,q8_0"])[:2] == ["-ctk", "f16,q8_0"]
    with pytest.raises(ToolArgsError, match="bogus"):
        prepare("bench", ["-ctk", "f16,bogus"])


def test_quantized_v_turns_flash_attention_on():
    assert prepare("cli", ["-ctv", "q8_0"]) == ["-ctv", "q8_0", "-fa", "on"]
    assert prepare("bench", ["-ctv", "q4_0"]) == ["-ctv", "q4_0", "-fa", "1"]
    assert prepare("cli", ["-ctv", "f16"]) == ["-ctv", "f16"]
    assert prepare("cli", ["-ctk", "q8_0"]) == ["-ctk", "q8_0"]  # K alone needs no FA


def test_quantized_v_with_flash_attention_off_is_an_error():
    with pytest.raises(ToolArgsError, match="flash attention"):
        prepare("perplexity", ["-ctv", "q8_0", "-fa", "off"])
    assert prepare("cli", ["-ctv", "q8_0", "-fa", "auto"]) == ["-ctv", "q8_0", "-fa", "auto"]


def test_missing_value_is_an_error():
    with pytest.raises(ToolArgsError, match="needs a value"):
        prepare("cli", ["-ctk"])


def test_server_binds_loopback_by_default():
    assert prepare("server", ["-m", "x.gguf"]) == ["-m", "x.gguf", "--host", "127.0.0.1"]
    assert prepare("server", ["--host", "::1"]) == ["--host", "::1"]
    assert prepare("server", [], env={"LLAMA_ARG_HOST": "127.0.0.2"}) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "example.org"])
def test_server_on_a_public_host_needs_an_api_key(host):
    with pytest.raises(ToolArgsError, match="--api-key"):
        prepare("server", ["--host", host])
    assert prepare("server", ["--host", host, "--api-key", "s3cret"])
    assert prepare("server", ["--host", host], env={"LLAMA_API_KEY": "k"})


def test_the_rpc_server_stays_on_loopback_unless_told_it_has_no_authentication():
    assert prepare("rpc-server", ["-p", "50052"]) == ["-p", "50052"]  # upstream binds 127.0.0.1
    assert prepare("rpc-server", ["-H", "::1"]) == ["-H", "::1"]
    with pytest.raises(ToolArgsError, match="no authentication.*ssh"):
        prepare("rpc-server", ["-H", "0.0.0.0", "-p", "50052"])
    notes = []
    assert prepare("rpc-server", ["--host", "10.0.0.2", "--allow-remote"], notes=notes) == ["--host", "10.0.0.2"]
    assert notes and notes[0].startswith("WARNING") and "no authentication" in notes[0]


def test_rpc_servers_of_a_tool_are_probed_before_it_starts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(ToolArgsError, match=f"--rpc: RPC server 127.0.0.1:{free}: cannot connect"):
        prepare("cli", ["-m", "x.gguf", "--rpc", f"127.0.0.1:{free}"])
    with pytest.raises(ToolArgsError, match="host:port"):
        prepare("bench", ["-m", "x.gguf", "--rpc", "gpu-box"])
