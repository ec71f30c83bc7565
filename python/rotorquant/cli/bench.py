"""``rq-bench``: memory, speed and quality of KV-cache types on one model.

    rq-bench MODEL.gguf [--cache-types f16,q8_0,q4_0,planar3,iso3,planar4,iso4] [--ctx 4096]
             [--depths 0,16384,65536] [--text FILE] [--ngl 99] [-o DIR]

Prints the table and writes DIR/results.json, DIR/results.md, DIR/quality.png and
DIR/decode.png.  A rerun with the same DIR keeps every finished measurement.
Exit status: 0 when every measurement ran, 1 when some failed (listed), 2 for bad
arguments.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from ..bench.settings import _DEFAULT_TYPES, MEASURES


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None


def _measures(text: str) -> tuple[str, ...]:
    got = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in got if x not in MEASURES]
    if bad or not got:
        raise argparse.ArgumentTypeError(f"choose from {','.join(MEASURES)}, not {text!r}")
    return got


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rq-bench", description=__doc__.split("\n\n")[0],
                                 epilog="K/V pairs: a name alone is the same type for K and V; "
                                        "K/V names both (iso3/q8_0).")
    ap.add_argument("model", help="a GGUF file")
    ap.add_argument("--cache-types", default=_DEFAULT_TYPES, metavar="T[,K/V...]",
                    help=f"pairs to measure (default {_DEFAULT_TYPES}); f16 is added for the quality reference")
    ap.add_argument("--ctx", type=int, default=4096, help="context of the KV-bytes figure and longest needle "
                    "haystack (default 4096)")
    ap.add_argument("--depths", type=_ints, default=(0, 16384, 65536), metavar="D,...",
                    help="tokens already in the cache for the speed tests (default 0,16384,65536)")
    ap.add_argument("--text", help="text for perplexity and haystacks (default: the built-in calibration sample, "
                    "~2,500 tokens; pass a longer text for tighter perplexity figures)")
    ap.add_argument("-ngl", "--ngl", "--n-gpu-layers", dest="ngl", type=int, default=99,
                    help="layers on the GPU (default 99: all; ignored without one)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="prefill test size (default 512)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="decode test size (default 128)")
    ap.add_argument("-r", "--reps", type=int, default=2, help="llama-bench repetitions (default 2)")
    ap.add_argument("--ppl-ctx", type=int, default=512, help="perplexity window (default 512)")
    ap.add_argument("--chunks", type=int, default=8, help="perplexity windows at most (default 8)")
    ap.add_argument("--niah-lengths", type=_ints, default=None, metavar="N,...",
                    help="haystack lengths in tokens (default ctx/4, ctx/2, ctx)")
    ap.add_argument("--niah-trials", type=int, default=3, help="needle depths per length (default 3)")
    ap.add_argument("--kv-policy", default="auto", help="auto | none | FILE, for pairs with a rotor type "
                    "(default auto: the model's calibrated policy if there is one)")
    ap.add_argument("--only", type=_measures, default=MEASURES, metavar="M,...",
                    help=f"measure only these ({','.join(MEASURES)})")
    ap.add_argument("-o", "--out", help="output folder (default rq-bench-MODELNAME)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    return ap


def main(argv: "list[str] | None" = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("rotorquant").setLevel(logging.ERROR)
    from ..bench import Settings, parse_pairs, run
    from ..errors import KVPolicyError, RotorQuantError

    try:
        if not args.no_plots:
            from ..bench.plots import _pyplot
            _pyplot()  # fail now, not after an hour of measuring
        settings = Settings(model=args.model, pairs=parse_pairs(args.cache_types), ctx=args.ctx,
                            depths=args.depths, text=args.text, n_gpu_layers=args.ngl, threads=args.threads,
                            n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.reps, ppl_ctx=args.ppl_ctx,
                            chunks=args.chunks, niah_lengths=args.niah_lengths, niah_trials=args.niah_trials,
                            kv_policy=args.kv_policy, measures=args.only, out=args.out, plots=not args.no_plots)
        outcome = run(settings, command=shlex.join(["rq-bench", *argv]))
    except (ValueError, ImportError, KVPolicyError, RotorQuantError) as exc:
        print(f"rq-bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output folder cannot be made or written, the disk is full...
        print(f"rq-bench: error: {exc.strerror or exc}"
              + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrq-bench: interrupted; finished measurements are kept (rerun to go on)", file=sys.stderr)
        return 130
    print((settings.out / "results.md").read_text(), end="")
    print("wrote " + ", ".join(str(f) for f in outcome.files), file=sys.stderr)
    for label, why in outcome.failures:
        print(f"rq-bench: {label} failed: {why}", file=sys.stderr)
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
