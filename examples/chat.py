"""Chat completions: the model's own template (rendered by llama.cpp's chat code, as
llama-server renders it), streaming, JSON output, a reasoning budget and tool definitions.

    python examples/chat.py [MODEL.gguf]        (default: the embedded Gemma-3-270M)
"""
import json
import sys

from rotorquant import Llama

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def main(model: str) -> None:
    with Llama(model, n_ctx=2048) as llm:
        messages = [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Name three primary colours."}]
        reply = llm.create_chat_completion(messages, max_tokens=48, temperature=0)
        print(reply["choices"][0]["message"]["content"])

        # the same, streamed: each chunk carries a delta of the message
        for chunk in llm.create_chat_completion(messages, max_tokens=48, temperature=0, stream=True):
            print(chunk["choices"][0]["delta"].get("content") or "", end="", flush=True)
        print()

        # JSON that follows a schema (upstream's schema-to-grammar converter)
        schema = {"type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"},
                                                               "maxItems": 3}}, "required": ["colours"]}
        reply = llm.create_chat_completion(messages, max_tokens=64, temperature=0,
                                           response_format={"type": "json_object", "schema": schema})
        print(json.loads(reply["choices"][0]["message"]["content"]))

        # a reasoning model's thinking, capped: after 64 tokens in its thinking block the
        # end tag is forced and the answer follows (a template without one ignores this)
        reply = llm.create_chat_completion(messages, max_tokens=128, temperature=0, reasoning_budget=64)
        print(reply["choices"][0]["message"].get("reasoning_content") or "(no reasoning block)")

        # tools: what the template makes of them (a reply with calls comes back parsed
        # into message["tool_calls"] with finish_reason "tool_calls")
        prompt = llm.apply_chat_template([{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER])
        print(f"prompt with tools: {len(prompt)} characters")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
