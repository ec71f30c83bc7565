"""Chat: prompts rendered by upstream's chat code, replies parsed back, OpenAI shapes.

The contract: ``Llama.apply_chat_template`` gives, byte for byte, the prompt the bundled
``llama-server`` renders for the same request (its ``/apply-template``), for every real
model we have; ``create_chat_completion`` generates from that prompt and returns the reply
parsed as the server would (content, reasoning, tool calls).
"""
import json
import socket
import subprocess
import time
import urllib.request

import pytest

import rq_assets
from rotorquant import Llama
from rotorquant._native import BIN_DIR
from rotorquant.chat import ReplyParser, json_schema_to_grammar
from rotorquant.errors import ChatError

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

REQUESTS = {
    "one user turn": {"messages": [{"role": "user", "content": "What is 2+2?"}]},
    "system and turns": {"messages": [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you? é ü 漢字"}]},
    "assistant prefill": {"messages": [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "One, two"}]},
    "no generation prompt": {"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": False},
}
TOOL_REQUESTS = {
    "tools": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": WEATHER},
    "tool result": {"tools": WEATHER, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]},
}


@pytest.fixture(scope="module")
def qwen_model():
    try:
        return rq_assets.qwen25_05b()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"Qwen2.5 could not be fetched: {exc}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The bundled llama-server on a model, for its /apply-template."""

    def __init__(self, model):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [str(BIN_DIR / "llama-server"), "-m", str(model), "--port", str(self.port), "--host", "127.0.0.1",
             "-c", "512", "-t", "1", "-np", "1", "--no-warmup"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.proc.stderr.read()[-2000:]!r}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError("llama-server did not become healthy")

    def apply_template(self, request: dict) -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/apply-template",
                                     data=json.dumps(request).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["prompt"]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.mark.parametrize("model_name", ["smollm2", "gemma", "qwen"])
def test_prompt_is_byte_identical_to_llama_servers(model_name, request):
    model = request.getfixturevalue({"smollm2": "smollm2_model", "gemma": "gemma_model",
                                     "qwen": "qwen_model"}[model_name])
    cases = dict(REQUESTS, **(TOOL_REQUESTS if model_name == "qwen" else {}))
    server = Server(model)
    try:
        expected = {name: server.apply_template(req) for name, req in cases.items()}
    finally:
        server.close()
    with Llama(model, vocab_only=True) as llm:
        for name, req in cases.items():
            options = {k: v for k, v in req.items() if k != "messages"}
            assert llm.apply_chat_template(req["messages"], **options) == expected[name], name


def test_a_trailing_assistant_message_is_continued(smollm2_model):
    with Llama(smollm2_model, vocab_only=True) as llm:
        prompt = llm.apply_chat_template(REQUESTS["assistant prefill"]["messages"])
    assert prompt.endswith("One, two")


def test_chat_completion_is_openai_shaped_and_streams_the_same_text(smollm2_model):
    msgs = REQUESTS["one user turn"]["messages"]
    with Llama(smollm2_model, n_ctx=512, n_threads=2) as llm:
        out = llm.create_chat_completion(msgs, max_tokens=12, temperature=0)
        chunks = list(llm.create_chat_completion(msgs, max_tokens=12, temperature=0, stream=True))
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == choice["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]


def test_response_format_constrains_the_reply_to_the_schema(smollm2_model):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    with Llama(smollm2_model, n_ctx=512, n_threads=2) as llm:
        out = llm.create_chat_completion(REQUESTS["one user turn"]["messages"], max_tokens=40, temperature=0,
                                         response_format={"type": "json_object", "schema": schema})
    reply = json.loads(out["choices"][0]["message"]["content"])
    assert isinstance(reply["answer"], int)


def test_chat_logprobs_are_openais_content_list(smollm2_model):
    with Llama(smollm2_model, n_ctx=512, n_threads=2) as llm:
        out = llm.create_chat_completion(REQUESTS["one user turn"]["messages"], max_tokens=4, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]
    first = content[0]
    assert first["logprob"] <= 0 and bytes(first["bytes"]).decode() == first["token"]
    assert len(first["top_logprobs"]) == 3 and first["top_logprobs"][0]["token"] == first["token"]  # greedy


def test_tool_calls_in_the_templates_format_are_parsed(qwen_model):
    with Llama(qwen_model, vocab_only=True) as llm:
        cp = llm._chat_template().render(TOOL_REQUESTS["tools"]["messages"], tools=WEATHER)
    assert cp.grammar_lazy and cp.trigger_patterns  # constrained only once a call starts
    with ReplyParser(cp.parser) as parser:
        msg = parser.parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert msg["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    with ReplyParser(cp.parser) as parser:
        assert parser.parse("It is sunny.") == {"role": "assistant", "content": "It is sunny."}


# A minimal reasoning template in the style of Qwen3's: past reasoning rendered in
# <think> tags, the generation prompt opens one (upstream detects the tags from this).
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' and m.reasoning_content %}"
    "<think>\n{{ m.reasoning_content }}\n</think>\n{% endif %}{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n{% else %}<think>\n{% endif %}{% endif %}")


def test_reasoning_in_thinking_tags_becomes_reasoning_content(tiny_model):
    with Llama(tiny_model, vocab_only=True, chat_template=THINKING_TEMPLATE) as llm:
        cp = llm._chat_template().render([{"role": "user", "content": "Hi"}])
        with ReplyParser(cp.parser) as parser:
            msg = parser.parse("Let me think.\n</think>\nHello!")
        with ReplyParser(llm._chat_template().render([{"role": "user", "content": "Hi"}],
                                                     reasoning_format="none").parser) as parser:
            raw = parser.parse("Let me think.\n</think>\nHello!")
    assert msg["reasoning_content"].strip() == "Let me think."
    assert msg["content"].strip() == "Hello!"
    assert "</think>" in raw["content"]
    with Llama(tiny_model, vocab_only=True, chat_template=THINKING_TEMPLATE) as llm:
        off = llm.apply_chat_template([{"role": "user", "content": "Hi"}], enable_thinking=False)
    assert off.endswith("<think>\n\n</think>\n")  # the template's own switch


def test_a_reasoning_budget_cuts_the_thinking_and_forces_the_end_tag(smollm2_model):
    """SmolLM2 is no reasoning model: opened a <think> block, it never closes it alone, so
    whatever closes it here is the budget (upstream's sampler, as --reasoning-budget).
    Its <think> is three ordinary tokens, which the sampler finds in the generation prompt
    only where the tokenizer splits it as it splits the tag alone: after a newline."""
    ask = [{"role": "user", "content": "Name a colour."}]
    template = THINKING_TEMPLATE.replace("<|assistant|>{% if", "<|assistant|>\n{% if")
    with Llama(smollm2_model, n_ctx=512, chat_template=template) as llm:
        def reply(**kw):
            return llm.create_chat_completion(ask, max_tokens=24, temperature=0, **kw)["choices"][0]["message"]

        free = reply()
        cut = reply(reasoning_budget=5)
        raw = reply(reasoning_budget=5, reasoning_budget_message=" Enough.", reasoning_format="none")
        skipped = reply(reasoning_budget=0)
        assert reply(reasoning_budget=-1) == free  # the server's "no budget"
        # thinking switched off: the template closes the block itself, nothing is forced
        off = reply(enable_thinking=False, reasoning_format="none")
        assert reply(enable_thinking=False, reasoning_format="none", reasoning_budget=1,
                     reasoning_budget_message=" Enough now, really.") == off
        n_reasoning = len(llm.tokenize(cut["reasoning_content"], add_special=False))
    assert free.get("content", "") == "" and len(free["reasoning_content"]) > 20  # all thinking
    assert 0 < n_reasoning <= 5
    assert cut["reasoning_content"] == free["reasoning_content"][:len(cut["reasoning_content"])]
    assert " Enough.</think>" in raw["content"]
    assert skipped.get("reasoning_content", "").strip() == ""


# Hermes-style tool calls and a thinking block opened by the generation prompt: upstream's
# chat code finds both (a lazy tool-call grammar triggered by "<tool_call>\n", <think> tags)
TOOLS_THINKING_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {% for t in tools %}{{ t | tojson }}{% endfor %}\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{%- if m.role == 'assistant' %}{% if m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n{% endif %}"
    "{% if m.content %}{{ m.content }}{% endif %}{% if m.tool_calls %}{% for tc in m.tool_calls %}<tool_call>\n"
    "{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}{% endif %}"
    "{%- elif m.role == 'tool' %}<tool_response>\n{{ m.content }}\n</tool_response>{% else %}{{ m.content }}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")


def test_with_tools_a_reasoning_block_is_thinking_and_a_budget_still_closes_it(qwen_model):
    """As in the server, the tool-call grammar is off while a reasoning block counts or is
    forced closed: a forced budget message holding the call trigger stays reasoning (with
    the grammar on, it would have started a call and then refused the forced end tag)."""
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    with Llama(qwen_model, n_ctx=1024, n_threads=2, chat_template=TOOLS_THINKING_TEMPLATE) as llm:
        cp = llm._chat_template().render(msgs, tools=WEATHER)
        assert cp.grammar_lazy and cp.trigger_patterns == ("<tool_call>\n",) and cp.thinking_start_tag == "<think>"
        out = llm.create_chat_completion(msgs, tools=WEATHER, max_tokens=48, temperature=0, reasoning_budget=3,
                                         reasoning_budget_message=" <tool_call>\n")
        msg = out["choices"][0]["message"]
        thought = msg["reasoning_content"].removesuffix(" <tool_call>\n")
        assert thought != msg["reasoning_content"]  # the forced message, trigger and all, is reasoning
        assert 0 < len(llm.tokenize(thought, add_special=False)) <= 3
    assert not msg.get("tool_calls") and out["choices"][0]["finish_reason"] != "tool_calls"


def test_json_schema_to_grammar_is_upstreams_converter():
    gbnf = json_schema_to_grammar({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert gbnf.startswith("integer ::=") or "root ::=" in gbnf
    with pytest.raises(ChatError):
        json_schema_to_grammar("{not json")


def test_bad_chat_requests_raise_errors_that_name_the_problem(tiny_model, smollm2_model):
    with Llama(smollm2_model, vocab_only=True) as llm:
        with pytest.raises(ChatError, match="content"):
            llm.apply_chat_template([{"role": "user"}])
        with pytest.raises(TypeError, match="messages"):
            llm.apply_chat_template("Hello")
        with pytest.raises(ValueError, match="tool_choice"):
            llm.apply_chat_template([{"role": "user", "content": "x"}], tool_choice="sometimes")
        with pytest.raises(ValueError, match="reasoning_format"):
            llm.apply_chat_template([{"role": "user", "content": "x"}], reasoning_format="verbose")
        with pytest.raises(TypeError):
            llm.apply_chat_template([{"role": "user", "content": "x"}], temperature=0.5)
    with Llama(smollm2_model, n_ctx=256, n_threads=1) as llm:
        msgs = [{"role": "user", "content": "x"}]
        with pytest.raises(ValueError, match="response_format"):
            llm.create_chat_completion(msgs, response_format={"type": "yaml"})
        with pytest.raises(ValueError, match="top_logprobs"):
            llm.create_chat_completion(msgs, top_logprobs=2)
        with pytest.raises(TypeError):
            llm.create_chat_completion(msgs, temprature=0.5)
        with pytest.raises(ChatError, match="grammar"):
            llm.create_chat_completion(msgs, grammar='root ::= "a"', response_format={"type": "json_object"})
        for bad in (-2, 1.5, True, 2**31):
            with pytest.raises(ValueError, match="reasoning_budget must be None, -1 or an integer"):
                llm.create_chat_completion(msgs, reasoning_budget=bad)
        with pytest.raises(TypeError, match="reasoning_budget_message"):
            llm.create_chat_completion(msgs, reasoning_budget=3, reasoning_budget_message=None)
    with pytest.raises(ChatError, match="chat template"):
        with Llama(tiny_model, vocab_only=True, chat_template="{% for %}") as llm:
            llm.apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="chat_template"):
        Llama(tiny_model, vocab_only=True, chat_template="")


def test_a_generated_tool_call_comes_back_parsed_whole_and_streamed(qwen_model):
    """The reply is prefilled with the template's call tag (a trailing assistant message is
    continued, as in the server), so the 0.5B model writes a call in Qwen's format.  The request
    is worded so that greedy decoding is not a near tie: asked "What's the weather in Paris?",
    the model's first-token logits for `<|im_end|>` and `{"` differ by 0.02, and CPUs with
    different kernels chose differently; here `{"` leads by 2.7."""
    msgs = [{"role": "user", "content": "Call get_weather for Paris."},
            {"role": "assistant", "content": "<tool_call>\n"}]
    with Llama(qwen_model, n_ctx=1024, n_threads=2) as llm:
        out = llm.create_chat_completion(msgs, tools=WEATHER, max_tokens=48, temperature=0)
        chunks = list(llm.create_chat_completion(msgs, tools=WEATHER, max_tokens=48, temperature=0, stream=True))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"]
    assert "".join(d["function"]["arguments"] for d in deltas) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
