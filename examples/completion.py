"""An OpenAI-shaped completion, streamed, with per-token log-probabilities.

    python examples/completion.py [MODEL.gguf]     (default: the embedded Gemma-3-270M)
"""
import sys

from rotorquant import Llama


def main(model: str) -> None:
    with Llama(model, n_ctx=1024, cache_type_k="iso4", cache_type_v="iso3") as llm:
        prompt = "The three primary colours are"
        print(prompt, end="", flush=True)
        for chunk in llm.create_completion(prompt, max_tokens=24, temperature=0.7, seed=1, stream=True):
            print(chunk["choices"][0]["text"], end="", flush=True)
        print()

        out = llm.create_completion(prompt, max_tokens=8, temperature=0, logprobs=3)
        lp = out["choices"][0]["logprobs"]
        for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            alternatives = ", ".join(f"{t!r} {v:.2f}" for t, v in top.items())
            print(f"{token!r:>14} {value:7.3f}   [{alternatives}]")
        print(out["usage"])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
