"""Output constrained by a GBNF grammar, and the sampling settings upstream's tools have.

    python examples/grammar.py [MODEL.gguf]        (default: the embedded Gemma-3-270M)
"""
import sys

from rotorquant import Llama

ANSWER = r'''
root   ::= "{\"answer\": " answer ", \"confidence\": " digit digit "}"
answer ::= "\"yes\"" | "\"no\""
digit  ::= [0-9]
'''


def main(model: str) -> None:
    with Llama(model, n_ctx=1024) as llm:
        prompt = "Question: is the sea salty? Reply in JSON.\n"
        print(llm.generate(prompt, max_tokens=32, temperature=0.8, seed=3, grammar=ANSWER))
        # penalties, DRY and min-p, as llama-server would apply them
        print(llm.generate("Once upon a time", max_tokens=40, temperature=0.9, seed=3, min_p=0.1,
                           repeat_penalty=1.1, dry_multiplier=0.8))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
