"""The GGUF pre-validator: every malformed or lying file is refused with GGUFFormatError
naming the field, before llama.cpp could abort the interpreter on it."""
import re
import struct
from pathlib import Path

import pytest

from rotorquant import GGUFFormatError, Llama, ModelLoadError, cache_types
from rotorquant._native import lib
from rotorquant.gguf_check import LLAMA_MAX_EXPERTS, LLAMA_MAX_LAYERS, read_header, validate_gguf

REPO = Path(__file__).resolve().parent.parent
U32, I32, F32, STR, ARR, U64 = 4, 5, 6, 8, 9, 10
F32_TYPE, Q8_0 = lib.GGML_TYPE_F32, lib.GGML_TYPE_Q8_0


def s(text) -> bytes:
    raw = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv(key, vtype, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def u32(key, v):
    return kv(key, U32, struct.pack("<I", v))


def strings(key, items):
    return kv(key, ARR, struct.pack("<IQ", STR, len(items)) + b"".join(s(t) for t in items))


def tensor(name, dims, ttype=F32_TYPE, offset=0) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ttype, offset)


def gguf(kvs=(), tensors=(), data=b"", version=3, n_kv=None, n_tensors=None, align=32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % align) + data


ARCH = [kv("general.architecture", STR, s("llama"))]
ONE_TENSOR = dict(tensors=[tensor("w", [4])], data=b"\0" * 16)


def refused(tmp_path, data: bytes, field: str, message: str):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFFormatError, match=message) as info:
        validate_gguf(path)
    assert info.value.field == field and str(path) in str(info.value)
    return info.value


def test_a_well_formed_file_is_read_whole(tiny_model):
    header = validate_gguf(tiny_model)
    assert header.metadata["general.architecture"] == "llama" and header.version == 3
    assert len(header.tensors) == 21 and header.data_offset % header.alignment == 0
    assert header.tensors[0].offset == 0


@pytest.mark.parametrize("data, field, message", [
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "version", "GGUF version 1"),
    (b"GGUF" + struct.pack("<I", 4) + b"\0" * 16, "version", "GGUF version 4"),
    (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "version", "big-endian"),
    (b"GGUF\3\0\0", "version", "truncated"),
    (gguf(n_kv=2**62), "metadata count", "cannot fit in a file"),
    (gguf(n_tensors=2**62), "tensor count", "cannot fit in a file"),
    (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**64 - 1), "metadata entry 0 key", "over the 1 GiB limit"),
    (gguf([kv("", U32, b"\0" * 4)]), "metadata entry 0 key", "empty key"),
    (gguf([u32("a", 1), u32("a", 2)]), "metadata 'a'", "duplicate key"),
    (gguf([kv("a", 13, b"\0" * 8)]), "metadata 'a' type", "unknown GGUF value type 13"),
    (gguf([kv("a", 0xFFFFFFFF, b"")]), "metadata 'a' type", "unknown GGUF value type"),
    (gguf([kv("a", ARR, struct.pack("<IQ", ARR, 1))]), "metadata 'a'", "nested arrays"),
    (gguf([kv("a", ARR, struct.pack("<IQ", U32, 2**40))]), "metadata 'a'", "over upstream's limit"),
    (gguf([kv("a", ARR, struct.pack("<IQ", U32, 1000))]), "metadata 'a' (1000 elements)", "truncated"),
    (gguf([kv("a", STR, s(b"\xff\xfe"))]), "metadata 'a'", "not UTF-8"),
    (gguf([kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 2) + s("x") + struct.pack("<Q", 2**40))]),
     "metadata 'tokenizer.ggml.tokens'[1]", "runs past the end"),
    (gguf([u32("general.alignment", 0)]), "metadata 'general.alignment'", "0 is not a power of two"),
    (gguf([u32("general.alignment", 48)]), "metadata 'general.alignment'", "48 is not a power of two"),
    (gguf([kv("general.alignment", I32, struct.pack("<i", 32))]), "metadata 'general.alignment'", "must be a uint32"),
])
def test_container_faults_are_named(tmp_path, data, field, message):
    refused(tmp_path, data, field, message)


def test_tensor_table_faults_are_named(tmp_path):
    cases = [
        (gguf(tensors=[tensor("x" * 64, [4])], data=b"\0" * 16), "tensor '" + "x" * 64 + "'", "1 to 63 bytes"),
        (gguf(tensors=[tensor("w", [4]), tensor("w", [4], offset=32)], data=b"\0" * 48), "tensor 'w'", "duplicate"),
        (gguf(tensors=[tensor("w", [1] * 5)], data=b"\0" * 32), "tensor 'w'", "5 dimensions"),
        (gguf(tensors=[tensor("w", [])], data=b"\0" * 32), "tensor 'w'", "0 dimensions"),
        (gguf(tensors=[tensor("w", [2**63])]), "tensor 'w' dimension 0", "negative as int64"),
        (gguf(tensors=[tensor("w", [2**63 - 1, 2])]), "tensor 'w'", "more than 2"),
        (gguf(tensors=[tensor("w", [2**61])]), "tensor 'w'", "bytes do not fit"),
        (gguf(tensors=[tensor("w", [33], Q8_0)]), "tensor 'w'", "not a multiple of q8_0's block of 32"),
        (gguf(tensors=[tensor("w", [4], 4)]), "tensor 'w' type", "type id 4 is not a weight type"),
        (gguf(tensors=[tensor("w", [4], 2**31 - 1)]), "tensor 'w' type", "not a weight type"),
        (gguf(tensors=[tensor("w", [4], lib.GGML_TYPE_COUNT)]), "tensor 'w' type", "not a weight type"),
        (gguf(tensors=[tensor("w", [4], offset=32)], data=b"\0" * 48), "tensor 'w' data offset", "expected 0"),
        (gguf(tensors=[tensor("a", [4]), tensor("b", [4], offset=16)], data=b"\0" * 48),
         "tensor 'b' data offset", "16, expected 32"),
        (gguf(tensors=[tensor("w", [1024])], data=b"\0" * 16), "tensor 'w' data", "runs to byte"),
    ]
    for data, field, message in cases:
        refused(tmp_path, data, field, message)


@pytest.mark.parametrize("name", [t.name for t in cache_types.all_types() if t.rotorquant])
def test_our_kv_cache_types_are_refused_as_weights(tmp_path, name):
    t = cache_types.get(name)
    refused(tmp_path, gguf(tensors=[tensor("w", [64], t.ggml_type)], data=b"\0" * 64), "tensor 'w' type",
            f"type id {t.ggml_type} is not a weight type of this build \\(a KV-cache-only type\\)")


@pytest.mark.parametrize("kvs, field, message", [
    (ARCH + [u32("llama.block_count", 0)], "metadata 'llama.block_count'", "positive integer"),
    (ARCH + [u32("llama.block_count", LLAMA_MAX_LAYERS + 1)], "metadata 'llama.block_count'", "at most 512"),
    (ARCH + [u32("llama.embedding_length", 0)], "metadata 'llama.embedding_length'", "positive"),
    (ARCH + [u32("llama.attention.head_count", 0)], "metadata 'llama.attention.head_count'", "positive"),
    (ARCH + [u32("llama.expert_count", 8), u32("llama.expert_used_count", 0)],
     "metadata 'llama.expert_used_count'", "0 experts used of 8"),
    (ARCH + [u32("llama.expert_count", 4), u32("llama.expert_used_count", 5)],
     "metadata 'llama.expert_used_count'", "5 experts used of 4"),
    (ARCH + [u32("llama.expert_count", LLAMA_MAX_EXPERTS + 1)], "metadata 'llama.expert_count'", "at most 1024"),
    ([strings("tokenizer.ggml.tokens", ["a", "b", "a"])], "metadata 'tokenizer.ggml.tokens'", "token 2 .* twice"),
    ([strings("tokenizer.ggml.tokens", ["a", "b"]),
      kv("tokenizer.ggml.scores", ARR, struct.pack("<IQ", F32, 1) + b"\0" * 4)],
     "metadata 'tokenizer.ggml.scores'", "1 entries for 2 tokens"),
])
def test_metadata_the_loader_would_abort_on_is_refused(tmp_path, kvs, field, message):
    refused(tmp_path, gguf(kvs, **ONE_TENSOR), field, message)


def test_llama_refuses_before_loading_and_the_error_is_a_model_load_error(tmp_path, tiny_model):
    data = bytearray(tiny_model.read_bytes())
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(bytes(data[:-100]))
    with pytest.raises(GGUFFormatError, match="truncated") as info:
        Llama(bad)
    assert isinstance(info.value, ModelLoadError) and isinstance(info.value, ValueError)
    assert info.value.field.startswith("tensor '")
    notgguf = tmp_path / "notes.txt"
    notgguf.write_text("hello")
    with pytest.raises(GGUFFormatError, match="is not a GGUF file"):
        Llama(notgguf)


def test_the_limits_are_llama_cpps():
    header = REPO / "vendor/llama-cpp-turboquant/llama.cpp/src/llama-hparams.h"
    if not header.is_file():
        pytest.skip("the upstream tree is not materialised")
    text = header.read_text()
    assert int(re.search(r"#define LLAMA_MAX_LAYERS\s+(\d+)", text).group(1)) == LLAMA_MAX_LAYERS
    assert int(re.search(r"#define LLAMA_MAX_EXPERTS\s+(\d+)", text).group(1)) == LLAMA_MAX_EXPERTS


def test_real_models_pass(smollm2_model):
    header = read_header(smollm2_model)
    assert len(header.metadata["tokenizer.ggml.tokens"]) == 49152
    validate_gguf(smollm2_model)
