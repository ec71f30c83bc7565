"""``rq-convert``: a Hugging Face safetensors checkpoint (folder or hub id) -> verified GGUF.

    rq-convert SRC [-o OUT] [--outtype auto|f16|bf16|q8_0|f32] [--quant Q4_K_M ...]
               [--mmproj | --no-mmproj] [--split-max-size 50G] [--revision REV]
               [--dry-run] [--force] [--no-verify] [--keep-intermediate]

The conversion is upstream llama.cpp's own converter (pinned, shipped with rotorquant);
see rotorquant.convert for what is added around it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HUB_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.tiktoken", "*.txt", "*.jinja", "tokenizer*"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rq-convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="local checkpoint folder, or a Hugging Face hub id (org/name)")
    ap.add_argument("-o", "--out", type=Path, help="output .gguf (default: ./NAME-TYPE.gguf)")
    ap.add_argument("--outtype", default="auto", choices=["auto", "f16", "bf16", "q8_0", "f32"])
    ap.add_argument("--quant", help="then quantize with the bundled llama-quantize (Q4_K_M, Q8_0, ...)")
    mm = ap.add_mutually_exclusive_group()
    mm.add_argument("--mmproj", dest="mmproj", action="store_true", default=None,
                    help="also write the vision projector (default: when the config has a vision tower)")
    mm.add_argument("--no-mmproj", dest="mmproj", action="store_false")
    ap.add_argument("--split-max-size", help="split the output into files of at most this size (e.g. 50G)")
    ap.add_argument("--revision", help="hub revision (branch, tag or commit)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    ap.add_argument("--force", action="store_true", help="replace existing outputs")
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--keep-intermediate", action="store_true", help="keep the unquantized GGUF with --quant")
    return ap


def resolve_source(src: str, revision: "str | None") -> Path:
    path = Path(src).expanduser()
    if path.exists() or src.startswith((".", "/", "~")) or src.count("/") != 1:
        if not path.exists():
            raise FileNotFoundError(f"{src}: no such folder (and not an org/name hub id)")
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModuleNotFoundError(f"{src} looks like a hub id; install huggingface_hub "
                                  "(pip install 'rotorquant[convert]') or pass a local folder") from None
    return Path(snapshot_download(src, revision=revision, allow_patterns=HUB_PATTERNS))


def main(argv: "list[str] | None" = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("rotorquant.llama").setLevel(logging.ERROR)  # verification loads the vocabulary
    from ..convert.checkpoint import CheckpointError
    from ..convert.pipeline import ConvertError, convert, make_plan
    from ..convert.verify import VerifyError
    from ..errors import RotorQuantError

    try:
        src = resolve_source(args.src, args.revision)
        plan = make_plan(src, args.out, args.outtype, args.quant, args.mmproj)
        print(plan.describe())
        if args.dry_run:
            return 0
        files = convert(plan, source_id=args.src, revision=args.revision, force=args.force,
                        split_max_size=args.split_max_size, verify=args.verify,
                        keep_intermediate=args.keep_intermediate)
    except (CheckpointError, ConvertError, VerifyError, RotorQuantError, OSError) as exc:
        print(f"rq-convert: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rq-convert: interrupted; nothing was written under the final names", file=sys.stderr)
        return 130
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
