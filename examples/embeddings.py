"""Sentence embeddings (mean-pooled, unit length) and their cosine similarities.

    python examples/embeddings.py [MODEL.gguf]     (default: the embedded Gemma-3-270M)
"""
import sys

from rotorquant import Llama

TEXTS = ["A cat sleeps on the sofa.", "The kitten is napping on the couch.", "Interest rates rose again."]


def main(model: str) -> None:
    with Llama(model, n_ctx=512, embeddings=True, pooling="mean") as llm:
        vectors = llm.embed(TEXTS)
        print(f"{len(vectors)} vectors of {len(vectors[0])} values")
        for i, a in enumerate(TEXTS):
            for j in range(i + 1, len(TEXTS)):
                cosine = sum(x * y for x, y in zip(vectors[i], vectors[j]))
                print(f"{cosine:6.3f}  {a!r} ~ {TEXTS[j]!r}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from rotorquant.demo_model import gemma_path
        main(str(gemma_path()))
