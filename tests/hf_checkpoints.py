"""Small Hugging Face checkpoints written at test time (never committed).

``smollm2_tokenizer(dir)``: the real SmolLM2 tokenizer files, taken from the registry GGUF
with transformers' GGUF reader.  ``tiny_llama(dir, tokenizer)``: a random 2-layer
LlamaForCausalLM that uses that tokenizer, saved as safetensors (optionally sharded).
Needs torch and transformers.
"""
from __future__ import annotations

import shutil
from pathlib import Path


def smollm2_tokenizer(out: Path, gguf_path: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(out)
    return out


def tiny_llama(out: Path, tokenizer_dir: Path, shards: int = 1, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = len(__import__("json").loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaky logits, so conversion mistakes show
        model.lm_head.weight.mul_(30)
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    out.mkdir(parents=True, exist_ok=True)
    size = None if shards == 1 else f"{max(1, sum(p.numel() * 4 for p in model.parameters()) // shards // 1000 + 1)}KB"
    model.save_pretrained(out, safe_serialization=True, **({"max_shard_size": size} if size else {}))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out
