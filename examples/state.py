"""Save a context after a long prompt and resume from it later (here: from a file), with a
compressed iso3 KV cache; the resumed logits equal those of an uninterrupted run.

    python examples/state.py [MODEL.gguf]          (default: the embedded Gemma-3-270M)
"""
import os
import sys
import tempfile

from rotorquant import Llama


def main(model: str) -> None:
    with Llama(model, n_ctx=512, cache_type_k="iso4", cache_type_v="iso3", flash_attn="on") as llm:
        prompt = llm.tokenize("A long document that we do not want to process twice. " * 8)
        more = llm.tokenize(" In summary,", add_special=False)
        llm.eval(prompt)
        path = os.path.join(tempfile.mkdtemp(), "after-prompt.state")
        llm.save_state(path)
        llm.eval(more)
        straight = list(llm.logits())

        llm.reset()
        llm.load_state(path)           # the prompt's KV cache, still iso4/iso3
        llm.eval(more)
        print(f"state file: {os.path.getsize(path)} bytes; resumed logits identical: {list(llm.logits()) == straight}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
