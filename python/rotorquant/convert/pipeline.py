"""Plan, convert, quantize, verify, and only then put the files in place.

Every output is first written into a hidden working folder next to its destination;
the final names appear only after the conversion (and quantization) succeeded and the
files passed verification, so an interrupted or failed run leaves nothing under a final
name.  Existing outputs are kept unless ``force`` is set.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import _native
from .checkpoint import Checkpoint, CheckpointError, open_checkpoint

UPSTREAM_DIR = _native.PACKAGE_DIR / "_upstream"
# bytes per parameter of the converter's output types (auto keeps bf16/f16 as stored)
OUT_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "auto": 2.0}


class ConvertError(RuntimeError):
    """Conversion failed; the message says at which step and why."""


@dataclass
class Plan:
    checkpoint: Checkpoint
    outtype: str
    quant: "str | None"
    mmproj: bool
    outputs: dict[str, Path]               # role ("model", "mmproj") -> final path
    estimated_bytes: int
    peak_ram_bytes: int
    free_bytes: int
    converter: dict = field(default_factory=dict)  # converter_info() of the architecture

    def describe(self) -> str:
        c = self.checkpoint
        lines = [f"source:        {c.path}",
                 f"architecture:  {c.architecture or '?'}",
                 f"tensors:       {len(c.tensors)} ({c.n_params / 1e9:.3f} B parameters, {c.nbytes / 2**30:.2f} GiB)",
                 f"output type:   {self.outtype}" + (f", then llama-quantize {self.quant}" if self.quant else "")]
        lines += [f"output:        {path}" for path in self.outputs.values()]
        lines += [f"estimated size {self.estimated_bytes / 2**30:.2f} GiB; free {self.free_bytes / 2**30:.2f} GiB",
                  f"peak RAM       ~{self.peak_ram_bytes / 2**30:.2f} GiB (largest tensor group, converted lazily)"]
        return "\n".join(lines)


def largest_group_bytes(ckpt: Checkpoint) -> int:
    """Bytes of the largest set of tensors the converter holds at once: one tensor, or one
    layer's experts, which it stacks into a single tensor."""
    groups: dict[str, int] = {}
    for t in ckpt.tensors.values():
        key = t.name
        if ".experts." in t.name:
            head, _, tail = t.name.partition(".experts.")
            rest = tail.split(".", 1)
            key = head + ".experts.*." + (rest[1] if len(rest) > 1 else "")
        groups[key] = groups.get(key, 0) + t.nbytes
    return max(groups.values(), default=0)


def make_plan(src: Path, out: "Path | None", outtype: str, quant: "str | None", mmproj: "bool | None") -> Plan:
    ckpt = open_checkpoint(src)
    if not ckpt.architecture:
        raise CheckpointError(f"{ckpt.path / 'config.json'} names no architecture")
    info = converter_info(ckpt.architecture)
    if not info["text"]:
        raise CheckpointError(f"architecture {ckpt.architecture} is not supported by the pinned converter "
                              "(its list: python convert_hf_to_gguf.py --print-supported-models)")
    if mmproj is None:
        mmproj = "vision_config" in ckpt.config and info["mmproj"]
    elif mmproj and not info["mmproj"]:
        raise CheckpointError(f"the converter has no vision projector for {ckpt.architecture}")
    label = quant.upper() if quant else outtype
    if out is None:
        out = Path.cwd() / f"{ckpt.path.name}-{label}.gguf"
    out = Path(out).expanduser().resolve()
    outputs = {"model": out}
    if mmproj:
        outputs["mmproj"] = out.with_name(f"mmproj-{out.name}")
    n_bytes = OUT_BYTES.get(outtype, 2.0) * ckpt.n_params
    if quant:
        n_bytes *= 1.5  # the intermediate and the quantized file coexist for a while
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
    return Plan(ckpt, outtype, quant, mmproj, outputs, int(n_bytes), 2 * largest_group_bytes(ckpt), free, info)


@functools.lru_cache(maxsize=None)
def converter_info(architecture: str) -> dict:
    """{"text", "mmproj", "mtp"}: what the pinned converter supports for this architecture."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_converter_info.py")), architecture],
                          capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named" in last:
            raise ConvertError(f"the converter cannot start ({last}); install its dependencies: "
                               "pip install 'rotorquant[convert]'")
        raise ConvertError(f"could not query the converter: {last}")
    return json.loads(proc.stdout)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(UPSTREAM_DIR / "gguf-py"), str(UPSTREAM_DIR)])
    env.pop("NO_LOCAL_GGUF", None)
    return env


def _run(cmd: list[str], what: str, env: "dict | None" = None) -> None:
    """Run a step; its progress output reaches a terminal, its last lines the error."""
    show = sys.stderr.isatty()
    tail: collections.deque = collections.deque(maxlen=20)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", bufsize=1) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if show:
                sys.stderr.write(line)
    if proc.returncode != 0:
        raise ConvertError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def provenance(plan: Plan, source_id: str, revision: "str | None") -> dict:
    info = _native.build_config
    return {"rotorquant.version": info.VERSION, "rotorquant.upstream_commit": info.UPSTREAM_COMMIT,
            "rotorquant.source": source_id, "rotorquant.source_revision": revision or "",
            "rotorquant.convert_options": json.dumps({"outtype": plan.outtype, "quant": plan.quant,
                                                      "mmproj": plan.mmproj})}


def convert(plan: Plan, *, source_id: str, revision: "str | None" = None, force: bool = False,
            split_max_size: "str | None" = None, verify: bool = True, keep_intermediate: bool = False,
            log=print) -> list[Path]:
    """Carry out ``plan``; returns the final paths (split outputs included)."""
    existing = [p for p in plan.outputs.values() if p.exists()]
    if existing and not force:
        raise ConvertError(f"{existing[0]} exists; pass --force to replace it")
    if plan.free_bytes < plan.estimated_bytes:
        raise ConvertError(f"not enough disk space in {plan.outputs['model'].parent}: need about "
                           f"{plan.estimated_bytes / 2**30:.2f} GiB, have {plan.free_bytes / 2**30:.2f} GiB "
                           f"({(plan.estimated_bytes - plan.free_bytes) / 2**30:.2f} GiB missing)")
    dest = plan.outputs["model"].parent
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".rq-convert-", dir=dest))
    try:
        env = _env()
        env["RQ_CONVERT_METADATA"] = json.dumps(provenance(plan, source_id, revision))
        base = [sys.executable, str(Path(__file__).with_name("_run_upstream.py")), str(UPSTREAM_DIR),
                str(plan.checkpoint.path), "--outtype", plan.outtype]
        if split_max_size:
            base += ["--split-max-size", split_max_size]
        text_only = []
        if plan.converter.get("mtp") and not any("mtp" in n for n in plan.checkpoint.tensors):
            text_only = ["--no-mtp"]  # upstream asserts when an MTP-capable model has no MTP tensors
        produced: dict[str, list[Path]] = {}
        log(f"converting {plan.checkpoint.path.name} -> {plan.outtype}")
        _run(base + text_only + ["--outfile", str(work / "model.gguf")], "conversion", env)
        produced["model"] = sorted(work.glob("model*.gguf"))
        if plan.mmproj:
            log("converting the vision projector")
            _run(base + ["--mmproj", "--outfile", str(work / "proj.gguf")], "mmproj conversion", env)
            produced["mmproj"] = sorted(p for p in work.glob("*proj*.gguf"))
        if plan.quant:
            produced["model"] = quantize(produced["model"], plan.quant, work, log, keep_intermediate)
        if verify:
            from .verify import verify_outputs
            verify_outputs(plan, produced, log=log)
        return _move_into_place(plan, produced, force)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def quantize(files: list[Path], quant: str, work: Path, log, keep: bool) -> list[Path]:
    tool = str(_native.BIN_DIR / "llama-quantize")
    first = files[0]
    out = work / f"quant-{quant}.gguf"
    cmd = [tool] + (["--keep-split"] if len(files) > 1 else []) + [str(first), str(out), quant]
    log(f"quantizing to {quant}")
    _run(cmd, "llama-quantize")
    result = sorted(work.glob(f"quant-{quant}*.gguf"))
    if not keep:
        for f in files:
            f.unlink()
    return result


def _move_into_place(plan: Plan, produced: dict[str, list[Path]], force: bool) -> list[Path]:
    final = []
    for role, files in produced.items():
        target = plan.outputs[role]
        if len(files) == 1:
            names = [target]
        else:  # keep llama.cpp's split naming: NAME-0000i-of-0000n.gguf
            names = [target.with_name(f"{target.stem}-{i:05d}-of-{len(files):05d}.gguf")
                     for i in range(1, len(files) + 1)]
        for src, dst in zip(files, names):
            if dst.exists() and not force:
                raise ConvertError(f"{dst} exists; pass --force to replace it")
            os.replace(src, dst)
            final.append(dst)
    return final


__all__ = ["ConvertError", "CheckpointError", "Plan", "make_plan", "convert", "converter_info"]
