"""Write a tiny random-weight llama GGUF with a working tokenizer.

The vocabulary is SentencePiece-style: <unk>, <s>, </s>, the 256 byte tokens
(so any text tokenizes) and a few dozen word pieces.  Weights are random, so
the text it generates is noise, but every code path from tokenizing to
sampling runs in well under a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

N_FF, N_LAYER = 256, 2
WORDS = ["▁the", "▁a", "▁of", "▁and", "▁to", "▁is", "▁in", "▁capital", "▁France", "▁Paris",
         "▁hello", "▁world", "▁.", "e", "t", "a", "o", "n", "s", "▁"]


def vocab() -> tuple[list[str], list[float], list[int]]:
    import gguf

    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256 + [T.NORMAL] * len(WORDS)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: Path, seed: int = 0, n_ctx_train: int = 512,
                     n_embd: int = 128, n_head: int = 2, n_head_kv: int = 1, k_bias: float = 0.0) -> Path:
    """Default shape: 2 layers, head_dim 64, grouped-query attention (2 q heads, 1 kv head).

    ``k_bias`` != 0 adds a K projection bias (per-channel offsets of that size, as Qwen2 has).
    """
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("rotorquant-tiny-test")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    def rnd(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    kv = n_embd // n_head * n_head_kv
    w.add_tensor("token_embd.weight", rnd(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rnd(n_vocab, n_embd))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rnd(n_embd, n_embd))
        w.add_tensor(p + "attn_k.weight", rnd(kv, n_embd))
        w.add_tensor(p + "attn_v.weight", rnd(kv, n_embd))
        if k_bias:
            w.add_tensor(p + "attn_k.bias", (k_bias * rng.standard_normal(kv)).astype(np.float32))
        w.add_tensor(p + "attn_output.weight", rnd(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rnd(N_FF, n_embd))
        w.add_tensor(p + "ffn_up.weight", rnd(N_FF, n_embd))
        w.add_tensor(p + "ffn_down.weight", rnd(n_embd, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return path
