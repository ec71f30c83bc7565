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


def tiny_qwen35(out: Path, tokenizer_dir: Path, moe: bool = True, shards: int = 1, seed: int = 0,
               vocab: int = 248320, mtp: bool = False) -> Path:
    """A random Qwen3_5(Moe)ForConditionalGeneration with the real structure at toy size:
    3 linear-attention + 1 full-attention layers, (MoE) 8 experts top-2 with a shared expert,
    partial rotary with an M-RoPE section, and a 2-layer vision tower (patch 16, merge 2,
    temporal 2), and with ``mtp`` one multi-token-prediction layer stored as the released
    checkpoints store it (``mtp.*``; transformers itself has no MTP module and ignores
    them).  Use the real vocabulary (rq_assets.qwen35_tokenizer) so the converter
    recognises the pre-tokenizer."""
    import json

    import torch
    import transformers

    torch.manual_seed(seed)
    text = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=64, intermediate_size=128,
                layer_types=["linear_attention"] * 3 + ["full_attention"],
                linear_conv_kernel_dim=4, linear_key_head_dim=32, linear_value_head_dim=32,
                linear_num_key_heads=2, linear_num_value_heads=8, max_position_embeddings=1024, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                                 "mrope_section": [3, 3, 2], "mrope_interleaved": True},
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    if moe:
        text.update(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=8,
                    num_experts_per_tok=2)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64)
    kind = "Qwen3_5Moe" if moe else "Qwen3_5"
    cfg = getattr(transformers, kind + "Config")(text_config=text, vision_config=vision, tie_word_embeddings=False)
    model = getattr(transformers, kind + "ForConditionalGeneration")(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    out.mkdir(parents=True, exist_ok=True)
    total = sum(p.numel() * 4 for p in model.parameters())
    kw = {} if shards == 1 else {"max_shard_size": f"{total // shards // 1000 + 1}KB"}
    model.save_pretrained(out, safe_serialization=True, **kw)
    if mtp:
        _add_mtp_layer(out, full_attention_layer=3, hidden=64)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "patch_size": 16,
        "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 1003520}))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def _add_mtp_layer(out: Path, full_attention_layer: int, hidden: int) -> None:
    """Append mtp.* tensors (a copy of one full-attention decoder layer, plus the MTP
    projection and norms) to a single-file checkpoint and declare them in config.json."""
    import json

    import numpy as np
    from safetensors.numpy import load_file, save_file

    (file,) = out.glob("*.safetensors")
    tensors = load_file(file)
    prefix = f"model.language_model.layers.{full_attention_layer}."
    rng = np.random.default_rng(1)
    for name, value in list(tensors.items()):
        if name.startswith(prefix):
            tensors["mtp.layers.0." + name[len(prefix):]] = value.copy()
    dtype = tensors[prefix + "input_layernorm.weight"].dtype
    tensors["mtp.fc.weight"] = (0.05 * rng.standard_normal((hidden, 2 * hidden))).astype(dtype)
    for norm in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        tensors[f"mtp.{norm}.weight"] = (0.1 * rng.standard_normal(hidden)).astype(dtype)
    save_file(tensors, str(file), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["text_config"]["mtp_num_hidden_layers"] = 1
    (out / "config.json").write_text(json.dumps(config, indent=2))
