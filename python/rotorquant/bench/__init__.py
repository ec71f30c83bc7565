"""``rq-bench``: what each KV-cache type costs and gives on one model.

For every K/V pair it measures KV-cache bytes (llama.cpp's own accounting of the
context, :mod:`rotorquant.plan`), prefill and decode speed at several depths (the
bundled ``llama-bench``), perplexity and KL divergence against the f16 cache (the
bundled ``llama-perplexity``, K stored quantized), and needle-in-a-haystack retrieval
(:mod:`.niah`).  Results are kept cell by cell in ``results.json`` of the output
folder, so a rerun skips what is done; the table goes to ``results.md`` and the plots
to ``quality.png`` and ``decode.png``.

    from rotorquant.bench import Settings, run
    run(Settings(model="m.gguf", pairs=parse_pairs("f16,iso3,iso3/q8_0")))
"""
from .settings import Pair, Settings, parse_pairs
from .runner import run

__all__ = ["Pair", "Settings", "parse_pairs", "run"]
