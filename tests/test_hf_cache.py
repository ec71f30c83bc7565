"""IsoQuantCache / PlanarQuantCache: the C formats in torch, a transformers Cache that really
stores packed blocks, every layer kind of a hybrid model, and clear errors."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ggml_ops import decode as ggml_decode, encode as ggml_encode  # noqa: E402
from rotorquant import IsoQuantCache, PlanarQuantCache  # noqa: E402
from rotorquant.hf_cache import codec  # noqa: E402
from rotorquant.hf_cache.layers import RotorQuantLayer, RotorQuantSlidingWindowLayer  # noqa: E402
from rotorquant.rotor import _tables as T  # noqa: E402
from rotorquant.rotor import reference as ref  # noqa: E402
from transformers import DynamicCache  # noqa: E402
from transformers.cache_utils import LinearAttentionLayer  # noqa: E402

C_TYPES = ref.KINDS  # planar3 iso3 planar4 iso4


def states(shape=(2, 3, 37, 128), seed=0, dtype=torch.float32):
    """Key-like values: a few large channels, one all-zero block, various scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-2, 1, shape[-1])
    x[0, 0, 0, :64] = 0
    return x.to(dtype)


def tiny_llama(**kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=64, **kw)
    return transformers.LlamaForCausalLM(cfg).eval()


def generate(model, ids, cache, n=12):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, cache=cache)[0, ids.shape[1]:]


# -- the formats --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", C_TYPES)
def test_torch_writes_the_bytes_ggml_writes_and_reads_what_ggml_reads(kind):
    x = states()
    packed = codec(kind).encode(x)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 37, 2 * ref.BLOCK_BYTES[kind])
    c_bytes = ggml_encode(x.numpy().reshape(-1, 128), kind)
    assert packed.numpy().tobytes() == c_bytes
    ours = codec(kind).decode(packed).numpy().reshape(-1, 128)
    theirs = ggml_decode(c_bytes, kind, (x[..., 0].numel(), 128))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_states_are_encoded_as_their_float32_values(dtype):
    x = states(dtype=dtype)
    assert torch.equal(codec("iso3").encode(x), codec("iso3").encode(x.float()))
    assert codec("iso3").decode(codec("iso3").encode(x), dtype).dtype == dtype


@pytest.mark.parametrize("kind", ref.PYTHON_ONLY_KINDS)
def test_the_2_bit_formats_follow_the_reference_codec(kind):
    x = states()
    packed = codec(kind).encode(x)
    assert packed.shape[-1] == 2 * 18  # half scale + 16 bytes of 2-bit indices per 64 values
    assert packed.numpy().tobytes() == ref.quantize(x.numpy(), kind)
    np.testing.assert_allclose(codec(kind).decode(packed).numpy().reshape(-1),
                               ref.dequantize(packed.numpy().tobytes(), kind), rtol=1e-6, atol=1e-5)


def test_the_2_bit_codebook_is_lloyd_max_for_a_unit_vectors_coordinate():
    """4 levels, each the mean of N(0, 1/64) between its thresholds (the midpoints)."""
    from math import erf, exp, pi, sqrt
    sigma = 1 / 8
    levels, bounds = T.LEVELS2, T.BOUNDS2
    assert bounds == pytest.approx([(a + b) / 2 for a, b in zip(levels, levels[1:])], abs=1e-7)
    edges = [-np.inf, *bounds, np.inf]
    phi = lambda t: 0.0 if np.isinf(t) else exp(-t * t / 2) / sqrt(2 * pi)
    Phi = lambda t: (0.0 if t < 0 else 1.0) if np.isinf(t) else 0.5 * (1 + erf(t / sqrt(2)))
    for level, a, b in zip(levels, edges, edges[1:]):
        centroid = sigma * (phi(a / sigma) - phi(b / sigma)) / (Phi(b / sigma) - Phi(a / sigma))
        assert level == pytest.approx(centroid, rel=1e-5)
    assert T.RELATIVE_MSE_GAUSSIAN["lloyd_max_2"] == pytest.approx(0.1175, abs=1e-4)


def test_the_error_on_gaussian_data_is_the_codebooks_mse():
    """Rotated, normalised Gaussian blocks have N(0, 1/64) coordinates: the relative error is
    the Lloyd-Max codebook's, 2-bit > 3-bit > 4-bit."""
    x = torch.randn(1, 4, 512, 128, generator=torch.Generator().manual_seed(0))
    for bits in (2, 3, 4):
        c = codec(f"iso{bits}")
        mse = ((c.decode(c.encode(x)) - x).square().sum() / x.square().sum()).item()
        assert mse == pytest.approx(T.RELATIVE_MSE_GAUSSIAN[f"lloyd_max_{bits}"], rel=0.1)


# -- the cache ---------------------------------------------------------------------------

def test_a_cache_is_importable_without_torch_until_asked_for():
    code = "import rotorquant, sys; assert 'torch' not in sys.modules; rotorquant.IsoQuantCache; " \
           "assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_tokens_older_than_the_residual_window_are_stored_as_the_c_blocks():
    layer = IsoQuantCache(bits=3, residual_length=5)
    k, v = states((1, 2, 20, 64), seed=1), states((1, 2, 20, 64), seed=2)
    full_k, full_v = layer.update(k, v, 0)
    assert torch.equal(full_k, k) and torch.equal(full_v, v)  # this step attends to its own states as given
    stored = layer.layers[0]
    assert stored.codes_k.shape == (1, 2, 15, 26) and stored.keys.shape == (1, 2, 5, 64)
    assert torch.equal(stored.codes_k, codec("iso3").encode(k[:, :, :15]))
    assert torch.equal(stored.keys, k[:, :, 15:])
    step_k, step_v = states((1, 2, 1, 64), seed=3), states((1, 2, 1, 64), seed=4)
    full_k, _ = layer.update(step_k, step_v, 0)
    assert full_k.shape[-2] == 21 and layer.get_seq_length() == 21
    assert torch.equal(full_k[:, :, :15], codec("iso3").decode(stored.codes_k[:, :, :15]))
    assert torch.equal(full_k[:, :, 15:], torch.cat((k[:, :, 15:], step_k), dim=-2))
    assert stored.codes_k.shape[-2] == 16  # the oldest recent token moved into a block


@pytest.mark.parametrize("bits, bits_per_element", [(4, 4.25), (3, 3.25), (2, 2.25)])
def test_stored_bytes_are_bits_over_16_of_a_bf16_dynamic_cache_plus_the_window(bits, bits_per_element):
    model = tiny_llama().to(torch.bfloat16)
    ids = torch.randint(0, 300, (1, 1000))
    caches = {"dynamic": DynamicCache(), "rotor": IsoQuantCache(bits=bits, residual_length=64)}
    with torch.no_grad():
        for c in caches.values():
            model(input_ids=ids, cache=c)
    dynamic = sum(l.keys.nbytes + l.values.nbytes for l in caches["dynamic"].layers)
    rotor = caches["rotor"].nbytes()
    assert rotor == pytest.approx(dynamic * ((1000 - 64) / 1000 * bits_per_element / 16 + 64 / 1000))
    assert all(l.codes_k.dtype == torch.uint8 for l in caches["rotor"].layers)


@pytest.mark.parametrize("cls", [IsoQuantCache, PlanarQuantCache])
def test_generate_takes_the_cache_under_both_names_and_a_window_longer_than_the_text_changes_nothing(cls):
    model = tiny_llama()
    ids = torch.randint(0, 300, (1, 30))
    want = generate(model, ids, DynamicCache())
    assert torch.equal(generate(model, ids, cls(bits=3, residual_length=100)), want)
    with torch.no_grad(), pytest.warns(FutureWarning):
        legacy = model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                past_key_values=cls(bits=3, residual_length=100))[0, 30:]
    assert torch.equal(legacy, want)


def test_a_hybrid_models_linear_attention_state_is_left_as_transformers_keeps_it():
    """Qwen3.5's pattern: 3 Gated DeltaNet layers, then 1 full-attention layer."""
    torch.manual_seed(0)
    cfg = transformers.Qwen3_5TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, layer_types=["linear_attention"] * 3 + ["full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32)
    model = transformers.Qwen3_5ForCausalLM(cfg).eval()
    ids = torch.randint(0, 300, (1, 40))
    want = generate(model, ids, DynamicCache(config=cfg))
    cache = IsoQuantCache(bits=4, config=model.config, residual_length=1000)
    assert torch.equal(generate(model, ids, cache), want)
    assert [type(l) for l in cache.layers] == [LinearAttentionLayer] * 3 + [RotorQuantLayer]
    quantized = IsoQuantCache(bits=3, config=model.config, residual_length=0)
    generate(model, ids, quantized)
    assert quantized.layers[3].codes_k.shape[-2] == 40 + 11 and quantized.layers[3].keys.shape[-2] == 0
    with pytest.raises(ValueError, match=r"linear-attention layers.*config=model\.config"):
        generate(model, ids, IsoQuantCache(bits=3))


def test_a_sliding_window_layer_keeps_only_its_window():
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, sliding_window=16, layer_types=["sliding_attention", "full_attention"] * 2)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 300, (1, 40))
    want = generate(model, ids, DynamicCache(config=cfg), n=30)
    cache = IsoQuantCache(bits=4, config=cfg, residual_length=1000)
    assert torch.equal(generate(model, ids, cache, n=30), want)
    small = IsoQuantCache(bits=4, config=cfg, residual_length=4)
    generate(model, ids, small, n=30)
    sliding, full = small.layers[0], small.layers[1]
    assert isinstance(sliding, RotorQuantSlidingWindowLayer) and type(full) is RotorQuantLayer
    assert sliding.codes_k.shape[-2] + sliding.keys.shape[-2] == 15  # sliding_window - 1
    assert full.codes_k.shape[-2] + full.keys.shape[-2] == 69 and full.keys.shape[-2] == 4


def test_crop_and_reset_remove_tokens_from_the_window_then_the_blocks():
    cache = IsoQuantCache(bits=4, residual_length=4)
    cache.update(states((1, 2, 10, 64)), states((1, 2, 10, 64), seed=1), 0)
    layer = cache.layers[0]
    cache.crop(-6)
    assert (layer.codes_k.shape[-2], layer.keys.shape[-2], cache.get_seq_length()) == (4, 0, 4)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0


def test_beam_search_reorders_blocks_and_recent_tokens_alike():
    model = tiny_llama()
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False,
                             cache=IsoQuantCache(bits=4, residual_length=1000))
        want = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, cache=DynamicCache())
    assert torch.equal(out, want)


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, error, message", [
    ({"bits": 5}, ValueError, "bits must be 2, 3 or 4, not 5"),
    ({"bits": True}, ValueError, "bits must be 2, 3 or 4"),
    ({"bits": 3, "value_bits": 8}, ValueError, "value_bits must be 2, 3 or 4"),
    ({"residual_length": -1}, ValueError, "residual_length must be an integer >= 0"),
    ({"residual_length": 1.5}, ValueError, "residual_length must be an integer"),
])
def test_bad_settings_are_named(kw, error, message):
    with pytest.raises(error, match=message):
        IsoQuantCache(**kw)


def test_a_head_dim_that_is_not_a_multiple_of_the_block_is_named():
    cache = IsoQuantCache(bits=4)
    with pytest.raises(ValueError, match="layer 0: key head_dim 80 is not a multiple of 64"):
        cache.update(torch.zeros(1, 2, 3, 80), torch.zeros(1, 2, 3, 80), 0)


def test_states_of_another_dtype_device_or_shape_are_refused_by_name():
    cache = IsoQuantCache(bits=4)
    k = states((1, 2, 3, 64))
    with pytest.raises(TypeError, match="int64; RotorQuant caches take float16, bfloat16 or float32"):
        cache.update(k.long(), k.long(), 0)
    with pytest.raises(ValueError, match="keys are torch.float32 on cpu but values are torch.float16"):
        cache.update(k, k.half(), 0)
    cache.update(k, k, 0)
    with pytest.raises(ValueError, match="layer 0 holds torch.float32 states on cpu; got torch.bfloat16"):
        cache.update(k.bfloat16(), k.bfloat16(), 0)
    with pytest.raises(ValueError, match="layer 0 holds states of batch 1, 2 heads"):
        cache.update(states((1, 4, 1, 64)), states((1, 4, 1, 64)), 0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="holds torch.float32 states on cpu; got torch.float32 on cuda"):
            cache.update(k.cuda(), k.cuda(), 0)
