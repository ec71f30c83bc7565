"""A checkpoint folder, read from its headers only.

Safetensors files begin with an 8-byte little-endian header length and a JSON header
mapping tensor names to dtype, shape and byte offsets.  Checking those headers catches
truncated files, lying offsets and duplicate names before the converter (and its memory)
is involved.  Pickled weights (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are never opened:
unpickling runs arbitrary code.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """The checkpoint cannot be converted; the message names the file and the problem."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str


@dataclass
class Checkpoint:
    path: Path
    config: dict
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else ""

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def n_params(self) -> int:
        n = 0
        for t in self.tensors.values():
            size = 1
            for d in t.shape:
                size *= d
            n += size
        return n


def _strict_json(text, what: str, strict: bool = True):
    """JSON as the safetensors format means it: no NaN/Infinity, no duplicate keys (``strict``;
    config files are read as transformers reads them), bounded nesting (a RecursionError is
    a clear error, not a traceback)."""
    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"key {k!r} appears twice")
            out[k] = v
        return out

    try:
        if not strict:
            return json.loads(text)
        return json.loads(text, parse_constant=no_constant, object_pairs_hook=pairs)
    except RecursionError:
        raise CheckpointError(f"{what} is nested too deeply to be a header") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({exc})") from None


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor's dtype, shape and byte range, checked against the file before anything
    reads the data: known dtypes, whole non-negative shapes and offsets, ranges that hold
    exactly the tensor and lie inside the file without overlapping."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: safetensors header claims {n} bytes but the file has {size}")
        header = _strict_json(fh.read(n), f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: __metadata__ must map names to strings")
    data_size = size - 8 - n
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry (not an object)")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape!r}, not a list of whole numbers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
        begin, end = offsets
        count = 1
        for d in shape:
            count *= d
        expected = count * DTYPE_BYTES[dtype]
        if not begin <= end <= data_size or end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} offsets [{begin}, {end}) do not fit {dtype}{shape} "
                f"({expected} bytes) in the file's {data_size} data bytes (truncated or corrupt)")
        spans.append((begin, end, name))
        out[name] = TensorInfo(name, dtype, tuple(shape), expected, path.name)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap")
    return out


def open_checkpoint(path: Path) -> Checkpoint:
    """Read config.json and every safetensors header of a local checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face model folder")
    config = _strict_json(config_file.read_bytes(), str(config_file), strict=False)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} is not a JSON object")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise CheckpointError(
                f"{path} holds only pickled weights ({', '.join(pickled[:3])}); rq-convert never "
                "unpickles files (that can run arbitrary code). Convert them to safetensors first.")
        raise CheckpointError(f"{path} has no .safetensors files")
    ckpt = Checkpoint(path, config)
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name in ckpt.tensors:
                raise CheckpointError(f"tensor {name!r} appears in both {ckpt.tensors[name].file} and {f.name}")
            ckpt.tensors[name] = info
    index = path / "model.safetensors.index.json"
    if index.is_file():
        doc = _strict_json(index.read_bytes(), str(index), strict=False)
        weight_map = doc.get("weight_map", {}) if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map object")
        missing = sorted(set(weight_map) - set(ckpt.tensors))
        if missing:
            raise CheckpointError(f"{index.name} lists {len(missing)} tensors no shard holds, e.g. {missing[0]!r}")
    return ckpt
