"""rq-run: the bundled tools behind one command, with checks before launch."""
import pytest

from conftest import run
from rotorquant._native import BIN_DIR


def test_print_command_shows_the_bundled_binary_and_added_flags(rq_run):
    proc = run([rq_run, "--print-command", "cli", "-m", "m.gguf", "-ctv", "q8_0"])
    assert proc.returncode == 0
    assert proc.stdout.split() == [str(BIN_DIR / "llama-cli"), "-m", "m.gguf", "-ctv", "q8_0", "-fa", "on"]


def test_server_defaults_to_loopback(rq_run):
    proc = run([rq_run, "--print-command", "server", "-m", "m.gguf"])
    assert proc.stdout.split()[-2:] == ["--host", "127.0.0.1"]


@pytest.mark.parametrize("args, message", [
    (["cli", "-ctk", "q3_0"], "valid types: f32, f16"),
    (["server", "--host", "0.0.0.0"], "--api-key"),
    (["perplexity", "-ctv", "q4_0", "-fa", "off"], "flash attention"),
    (["llama-cli"], "unknown tool 'llama-cli'"),
])
def test_bad_arguments_exit_2_with_a_message_and_start_nothing(rq_run, args, message):
    proc = run([rq_run, *args])
    assert proc.returncode == 2
    assert message in proc.stderr


def test_help_lists_the_tools(rq_run):
    proc = run([rq_run, "--help"])
    assert proc.returncode == 0
    for tool in ("cli", "server", "bench", "perplexity", "quantize", "mtmd", "rpc-server", "demo"):
        assert tool in proc.stdout


def test_tool_exit_codes_pass_through(rq_run):
    proc = run([rq_run, "completion", "-m", "/nonexistent.gguf", "-n", "1"])
    assert proc.returncode != 0


def test_completion_runs_on_the_tiny_model(rq_run, tiny_model):
    proc = run([rq_run, "completion", "-m", tiny_model, "-p", "hello", "-n", "4", "-no-cnv",
                "--temp", "0", "-ctk", "q8_0", "-ctv", "q8_0", "-t", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
