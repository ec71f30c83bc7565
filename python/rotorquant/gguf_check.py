"""Checks on a model file before it reaches C.

llama.cpp reports a missing or foreign file only through its log, and a file that parses but
lies (a dimension of 0, duplicate vocabulary strings, a type with no kernels, data past the
end) reaches a ``GGML_ASSERT`` in the loader: an abort that kills the Python interpreter.
``validate_gguf`` reads the whole header first -- every count, length, type, dimension and
offset, with overflow checks -- and raises ``GGUFFormatError`` naming the field.  It reads
only the header (the metadata and tensor table, not the weights), through ``mmap``.
"""
from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GGUFFormatError

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)            # what upstream's reader accepts
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                 # GGML_MAX_DIMS
MAX_NAME = 63                # GGML_MAX_NAME - 1 (the NUL)
MAX_STRING = 1 << 30         # upstream's caps on one string and one array
MAX_ARRAY = 1 << 30
INT64_MAX = (1 << 63) - 1
LLAMA_MAX_LAYERS = 512       # src/llama-hparams.h (a test compares them with the header)
LLAMA_MAX_EXPERTS = 1024

# GGUF value types (gguf.h's enum gguf_type): struct code, byte size
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
            7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_STRING, _ARRAY = 8, 9
_INTEGER_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}


def check_gguf_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path if it names a readable file that starts like a GGUF.

    Raises ``FileNotFoundError`` (missing), ``IsADirectoryError`` (a folder),
    ``PermissionError`` (unreadable) or ``GGUFFormatError`` (not GGUF, a ``ValueError``),
    each naming the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a str or os.PathLike, not {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(2, "model file not found", str(p))
    if p.is_dir():
        raise IsADirectoryError(21, "model_path is a directory, not a GGUF file", str(p))
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFFormatError(f"{p} is not a GGUF file (first bytes {magic!r}, expected {GGUF_MAGIC!r})",
                              path=p, field="magic", offset=0)
    return p


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int      # from the start of the data section
    nbytes: int


@dataclass
class GGUFHeader:
    """What ``validate_gguf`` read: the metadata (scalars and arrays as Python values, strings
    as ``str``) and the tensor table."""

    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0


class _Reader:
    """Bounds-checked little-endian reads from a buffer; every failure names what was read."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, field: str, problem: str, offset: int | None = None):
        raise GGUFFormatError(f"{self.path}: {field}: {problem}", path=self.path, field=field,
                              offset=self.pos if offset is None else offset)

    def take(self, n: int, what: str) -> int:
        if n > self.size - self.pos:
            self.fail(what, f"needs {n} bytes at offset {self.pos} but the file ends at {self.size} (truncated?)")
        at = self.pos
        self.pos += n
        return at

    def scalar(self, code: str, size: int, what: str):
        at = self.take(size, what)
        return struct.unpack_from("<" + code, self.buf, at)[0]

    def u32(self, what: str) -> int:
        return self.scalar("I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", 8, what)

    def string(self, what: str, raw: bool = False):
        n = self.u64(f"{what} length")
        if n > MAX_STRING:
            self.fail(what, f"string length {n} is over the 1 GiB limit")
        at = self.take(n, what)
        data = bytes(self.buf[at:at + n])
        if raw:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(what, "string is not UTF-8", at)


def _value(r: _Reader, vtype: int, what: str):
    if vtype in _SCALARS:
        code, size = _SCALARS[vtype]
        return r.scalar(code, size, what)
    if vtype == _STRING:
        return r.string(what)
    if vtype == _ARRAY:
        etype = r.u32(f"{what} element type")
        n = r.u64(f"{what} element count")
        if n > MAX_ARRAY:
            r.fail(what, f"array of {n} elements is over upstream's limit of {MAX_ARRAY}")
        if etype == _ARRAY:
            r.fail(what, "nested arrays are not supported")
        if etype in _SCALARS:
            code, size = _SCALARS[etype]
            at = r.take(n * size, f"{what} ({n} elements)")
            return list(struct.unpack_from(f"<{n}{code}", r.buf, at))
        if etype == _STRING:
            return _string_array(r, n, what)
        r.fail(f"{what} element type", f"unknown GGUF value type {etype}")
    r.fail(f"{what} type", f"unknown GGUF value type {vtype}")


def _string_array(r: _Reader, n: int, what: str) -> list[bytes]:
    """Vocabularies (~150K strings): kept as bytes (duplicates are checked on bytes, as
    llama-vocab maps them), read in a tight loop; the element is named only on failure."""
    buf, pos, size, out = r.buf, r.pos, r.size, []
    unpack = struct.Struct("<Q").unpack_from
    for i in range(n):
        if size - pos < 8:
            r.pos = pos
            r.fail(f"{what}[{i}] length", f"needs 8 bytes at offset {pos} but the file ends at {size} (truncated?)")
        length = unpack(buf, pos)[0]
        pos += 8
        if length > MAX_STRING or length > size - pos:
            r.pos = pos
            r.fail(f"{what}[{i}]", f"string of {length} bytes at offset {pos} runs past the end of the file")
        out.append(bytes(buf[pos:pos + length]))
        pos += length
    r.pos = pos
    return out


@functools.lru_cache(maxsize=None)
def _types() -> tuple[dict, frozenset]:
    """ggml's type table, from the library: ({id: (name, block size, type size)} of the types
    a weight may have, the ids of KV-cache-only types, ours included)."""
    from . import cache_types
    from ._native import ffi, lib

    kv_only = frozenset({t.ggml_type for t in cache_types.all_types() if t.rotorquant}
                        | {t for t in range(lib.GGML_TYPE_COUNT) if lib.rq_is_kv_only_type(t)})
    weights = {}
    for t in range(lib.GGML_TYPE_COUNT):
        size, blck = lib.ggml_type_size(t), lib.ggml_blck_size(t)
        if size and blck and t not in kv_only:
            weights[t] = (ffi.string(lib.ggml_type_name(t)).decode(), blck, size)
    return weights, kv_only


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and check the container: header, metadata, tensor table, offsets, file size."""
    p = check_gguf_path(path)
    with open(p, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise GGUFFormatError(f"{p}: the file is empty", path=p, field="magic", offset=0)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return _read(_Reader(view, p), size)
            finally:
                view.release()  # before the map closes (an exception's frames still refer to it)


def _read(r: _Reader, file_size: int) -> GGUFHeader:
    try:
        r.take(4, "magic")
        version = r.u32("version")
        if version not in VERSIONS:
            if int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
                r.fail("version", "a big-endian GGUF; llama.cpp reads little-endian files only", 4)
            r.fail("version", f"GGUF version {version} (llama.cpp reads versions 2 and 3)", 4)
        n_tensors, n_kv = r.u64("tensor count"), r.u64("metadata count")
        # every metadata entry takes >= 8 + 1 + 4 + 1 bytes, every tensor entry >= 8 + 1 + 4 + 4 + 8
        if n_kv > file_size // 14:
            r.fail("metadata count", f"{n_kv} entries cannot fit in a file of {file_size} bytes", 16)
        if n_tensors > file_size // 25:
            r.fail("tensor count", f"{n_tensors} tensors cannot fit in a file of {file_size} bytes", 8)
        header = GGUFHeader(r.path, version)
        for i in range(n_kv):
            key = r.string(f"metadata entry {i} key")
            if not key:
                r.fail(f"metadata entry {i} key", "empty key")
            if key in header.metadata:
                r.fail(f"metadata '{key}'", "duplicate key")
            vtype = r.u32(f"metadata '{key}' type")
            header.metadata[key] = _value(r, vtype, f"metadata '{key}'")
            if key == "general.alignment":
                a = header.metadata[key]
                if vtype != 4:
                    r.fail("metadata 'general.alignment'", "must be a uint32")
                if a == 0 or a & (a - 1):
                    r.fail("metadata 'general.alignment'", f"{a} is not a power of two")
                header.alignment = a
        types, kv_only = _types()
        names = set()
        for i in range(n_tensors):
            name = r.string(f"tensor {i} name")
            what = f"tensor '{name}'"
            if not name or len(name.encode()) > MAX_NAME:
                r.fail(what, f"name must be 1 to {MAX_NAME} bytes")
            if name in names:
                r.fail(what, "duplicate tensor name")
            names.add(name)
            n_dims = r.u32(f"{what} dimension count")
            if not 1 <= n_dims <= MAX_DIMS:
                r.fail(what, f"{n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            shape = tuple(r.u64(f"{what} dimension {d}") for d in range(n_dims))
            ttype = r.u32(f"{what} type")
            offset = r.u64(f"{what} data offset")
            if ttype not in types:
                r.fail(f"{what} type", f"type id {ttype} is not a weight type of this build"
                       + (" (a KV-cache-only type)" if ttype in kv_only else ""))
            tname, blck, tsize = types[ttype]
            n = 1
            for d, ne in enumerate(shape):
                if ne > INT64_MAX:
                    r.fail(f"{what} dimension {d}", f"{ne} is negative as int64")
                if ne and n > INT64_MAX // ne:
                    r.fail(what, f"shape {shape} has more than 2^63 elements")
                n *= ne
            if shape[0] % blck:
                r.fail(what, f"row length {shape[0]} is not a multiple of {tname}'s block of {blck}")
            nbytes = n // blck * tsize
            if nbytes > INT64_MAX - header.alignment:
                r.fail(what, f"{nbytes} bytes do not fit in a file")
            header.tensors.append(TensorInfo(name, shape, ttype, offset, nbytes))
        header.data_offset = -(-r.pos // header.alignment) * header.alignment
        expected = 0
        for t in header.tensors:
            if t.offset != expected:
                r.fail(f"tensor '{t.name}' data offset", f"{t.offset}, expected {expected} (the tensors' data "
                       "must follow each other, each padded to the alignment)")
            expected += -(-t.nbytes // header.alignment) * header.alignment
        end = header.data_offset + (header.tensors[-1].offset + header.tensors[-1].nbytes if header.tensors else 0)
        if end > file_size:
            last = header.tensors[-1].name
            r.fail(f"tensor '{last}' data", f"the tensor data runs to byte {end} but the file has {file_size} "
                   "(truncated?)")
        return header
    except (struct.error, OverflowError, MemoryError) as exc:  # belt and braces: the checks above come first
        r.fail("header", f"unreadable ({exc})")


# -- metadata the loader trusts ---------------------------------------------------------

def _check_metadata(header: GGUFHeader, path: Path) -> None:
    md = header.metadata

    def fail(key: str, problem: str):
        raise GGUFFormatError(f"{path}: metadata '{key}': {problem}", path=path, field=f"metadata '{key}'")

    arch = md.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        fail("general.architecture", "must be a string")
    if isinstance(arch, str):
        for suffix in ("embedding_length", "block_count", "attention.head_count", "context_length"):
            key = f"{arch}.{suffix}"
            v = md.get(key)
            if v is not None and not isinstance(v, list) and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                fail(key, f"must be a positive integer, not {v!r}")
        n_layer = md.get(f"{arch}.block_count")
        if isinstance(n_layer, int) and n_layer > LLAMA_MAX_LAYERS:
            fail(f"{arch}.block_count", f"{n_layer} layers; llama.cpp takes at most {LLAMA_MAX_LAYERS}")
        n_expert, n_used = md.get(f"{arch}.expert_count"), md.get(f"{arch}.expert_used_count")
        if isinstance(n_expert, int) and n_expert > LLAMA_MAX_EXPERTS:
            fail(f"{arch}.expert_count", f"{n_expert} experts; llama.cpp takes at most {LLAMA_MAX_EXPERTS}")
        if isinstance(n_expert, int) and isinstance(n_used, int) and n_expert > 0 and not 0 < n_used <= n_expert:
            fail(f"{arch}.expert_used_count", f"{n_used} experts used of {n_expert}")
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is not None:
        if not isinstance(tokens, list) or (tokens and not isinstance(tokens[0], bytes)):
            fail("tokenizer.ggml.tokens", "must be an array of strings")
        n_vocab = len(tokens)
        if len(set(tokens)) != n_vocab:
            seen, dup = set(), None
            for i, tok in enumerate(tokens):
                if tok in seen:
                    dup = (i, tok)
                    break
                seen.add(tok)
            fail("tokenizer.ggml.tokens", f"token {dup[0]} ({dup[1][:40]!r}) appears twice")
        for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            v = md.get(key)
            if v is not None and (not isinstance(v, list) or len(v) != n_vocab):
                fail(key, f"has {len(v) if isinstance(v, list) else 'no'} entries for {n_vocab} tokens")


def validate_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Check a GGUF before llama.cpp loads it: the container (see ``read_header``) and the
    metadata the loader asserts on (positive sizes, layer and expert limits, a vocabulary
    without duplicate strings and with as many scores and types as tokens; special-token ids
    outside the vocabulary are llama.cpp's to disable, with a warning).  Raises ``GGUFFormatError`` naming the field."""
    header = read_header(path)
    _check_metadata(header, Path(path))
    return header
