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
    x[1, 0, 0, :64] = float("nan")   # poisoned and huge rows: clamped scales, as in C
    x[1, 0, 1, 5] = float("inf")
    x[1, 0, 2] *= 1e30
    packed = codec(kind).encode(x)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3, 37, 2 * ref.BLOCK_BYTES[kind])
    c_bytes = ggml_encode(x.numpy().reshape(-1, 128), kind)
    assert packed.numpy().tobytes() == c_bytes
    ours = codec(kind).decode(packed).numpy().reshape(-1, 128)
    theirs = ggml_decode(c_bytes, kind, (x[..., 0].numel(), 128))
    assert np.isfinite(ours).all()
    row_scale = np.abs(theirs).max(axis=1, keepdims=True)
    assert (np.abs(ours - theirs) <= 1e-6 * row_scale).all()  # a few ulps of each row's largest value


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
    cache = IsoQuantCache(bits=3, residual_length=5)
    k, v = states((1, 2, 20, 64), seed=1), states((1, 2, 20, 64), seed=2)
    full_k, full_v = cache.update(k, v, 0)
    assert torch.equal(full_k, k) and torch.equal(full_v, v)  # this step attends to its own states as given
    layer = cache.layers[0]
    assert layer.codes_k.shape[-2] == 0  # held as given until the next step (so it can be cropped)
    step_k, step_v = states((1, 2, 1, 64), seed=3), states((1, 2, 1, 64), seed=4)
    full_k, _ = cache.update(step_k, step_v, 0)
    assert layer.codes_k.shape == (1, 2, 15, 26) and cache.get_seq_length() == 21
    assert torch.equal(layer.codes_k, codec("iso3").encode(k[:, :, :15]))
    assert torch.equal(layer.keys, torch.cat((k[:, :, 15:], step_k), dim=-2))
    assert torch.equal(full_k[:, :, :15], codec("iso3").decode(layer.codes_k))
    assert torch.equal(full_k[:, :, 15:], torch.cat((k[:, :, 15:], step_k), dim=-2))


@pytest.mark.parametrize("bits, bits_per_element", [(4, 4.25), (3, 3.25), (2, 2.25)])
def test_stored_bytes_are_bits_over_16_of_a_bf16_dynamic_cache_plus_the_window(bits, bits_per_element):
    model = tiny_llama().to(torch.bfloat16)
    ids = torch.randint(0, 300, (1, 1001))
    caches = {"dynamic": DynamicCache(), "rotor": IsoQuantCache(bits=bits, residual_length=64)}
    with torch.no_grad():
        for c in caches.values():
            model(input_ids=ids[:, :1000], cache=c)
            model(input_ids=ids[:, 1000:], cache=c)  # the prompt is encoded when the next step comes
    dynamic = sum(l.keys.nbytes + l.values.nbytes for l in caches["dynamic"].layers)
    rotor = caches["rotor"].nbytes()
    # 936 tokens in blocks, the last 64 as given, and this step's token until the next one
    assert rotor == pytest.approx(dynamic * ((1001 - 65) / 1001 * bits_per_element / 16 + 65 / 1001))
    assert all(l.codes_k.dtype == torch.uint8 for l in caches["rotor"].layers)


def test_value_bits_sets_v_apart():
    cache = IsoQuantCache(bits=4, value_bits=2, residual_length=0)
    cache.update(states((1, 2, 5, 128)), states((1, 2, 5, 128), seed=1), 0)
    cache.update(states((1, 2, 1, 128)), states((1, 2, 1, 128), seed=2), 0)
    layer = cache.layers[0]
    assert layer.codes_k.shape[-1] == 2 * 34 and layer.codes_v.shape[-1] == 2 * 18
    assert repr(cache).startswith("IsoQuantCache(K iso4, V iso2")


def test_quantized_attention_stays_close_to_the_exact_one():
    """4-bit blocks for every past token (no window): the last logits barely move."""
    model = tiny_llama()
    ids = torch.randint(0, 300, (1, 200))
    with torch.no_grad():
        want = model(input_ids=ids).logits[0, -1]
        for bits, bound in ((4, 0.02), (3, 0.06), (2, 0.25)):
            cache = IsoQuantCache(bits=bits, residual_length=0)
            model(input_ids=ids[:, :-1], cache=cache)
            got = model(input_ids=ids[:, -1:], cache=cache).logits[0, -1]
            assert cache.layers[0].codes_k.shape[-2] == 199
            assert ((got - want).square().mean() / want.square().mean()).item() < bound


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
    # 40 + 11 tokens went in; all but the latest are blocks (residual_length=0)
    assert quantized.layers[3].codes_k.shape[-2] == 50 and quantized.layers[3].keys.shape[-2] == 1
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
    # after 69 tokens (the last one not yet settled): 15 = sliding_window - 1 held, plus that one
    assert (sliding.codes_k.shape[-2], sliding.keys.shape[-2]) == (11, 5)
    assert (full.codes_k.shape[-2], full.keys.shape[-2]) == (64, 5)
    with pytest.raises(RuntimeError, match="sliding window that already forgot older ones"):
        small.crop(-2)
    assert full.keys.shape[-2] == 5  # refused before any layer changed
    small.crop(-1)
    assert small.layers[1].get_seq_length() == 68


def test_a_sliding_window_layer_stores_the_c_blocks_of_its_window():
    layer = RotorQuantSlidingWindowLayer("iso3", "iso3", residual_length=4, sliding_window=16)
    k, v = states((1, 2, 40, 64)), states((1, 2, 40, 64), seed=1)
    layer.update(k[:, :, :39], v[:, :, :39])
    layer.update(k[:, :, 39:], v[:, :, 39:])
    assert torch.equal(layer.codes_k, codec("iso3").encode(k[:, :, 24:35]))  # 15 held before this step
    assert torch.equal(layer.keys, k[:, :, 35:])


def test_removing_the_latest_tokens_restores_the_cache_that_never_saw_them():
    """Assisted decoding verifies a draft in one step and crops what it rejects."""
    k, v = states((1, 2, 30, 64)), states((1, 2, 30, 64), seed=1)
    seen, never = IsoQuantCache(bits=3, residual_length=4), IsoQuantCache(bits=3, residual_length=4)
    for c in (seen, never):
        c.update(k[:, :, :20], v[:, :, :20], 0)
        c.update(k[:, :, 20:21], v[:, :, 20:21], 0)
    seen.update(k[:, :, 21:26], v[:, :, 21:26], 0)  # a draft of 5
    seen.crop(-5)
    assert seen.get_seq_length() == never.get_seq_length() == 21
    out_a = seen.update(k[:, :, 26:27], v[:, :, 26:27], 0)
    out_b = never.update(k[:, :, 26:27], v[:, :, 26:27], 0)
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))  # what the next step attends to
    a, b = seen.layers[0], never.layers[0]
    assert torch.equal(a.codes_k, b.codes_k) and torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    seen.crop(0)
    seen.crop(-1000)  # more than held: everything
    assert seen.get_seq_length() == 0 and seen.nbytes() == 0 + 0


def test_prompt_lookup_decoding_gives_the_greedy_tokens():
    model = tiny_llama()
    ids = torch.randint(0, 30, (1, 60))  # a small alphabet: drafts are found and some are rejected
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=20, do_sample=False, cache=IsoQuantCache(bits=3, residual_length=8))
        assisted = model.generate(ids, max_new_tokens=20, do_sample=False, prompt_lookup_num_tokens=3,
                                  cache=IsoQuantCache(bits=3, residual_length=8))
    assert torch.equal(plain, assisted)


def test_reset_empties_the_cache_for_reuse():
    cache = IsoQuantCache(bits=4, residual_length=4)
    cache.update(states((1, 2, 10, 64)), states((1, 2, 10, 64), seed=1), 0)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0
    cache.update(states((1, 2, 3, 64), dtype=torch.bfloat16), states((1, 2, 3, 64), dtype=torch.bfloat16), 0)
    assert cache.layers[0].dtype == torch.bfloat16


def test_beam_search_reorders_blocks_and_recent_tokens_alike():
    model = tiny_llama()
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False,
                             cache=IsoQuantCache(bits=4, residual_length=1000))
        want = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, cache=DynamicCache())
        assert torch.equal(out, want)
        model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, cache=IsoQuantCache(bits=4, residual_length=2))
    cache = IsoQuantCache(bits=4, residual_length=2)
    cache.update(states((3, 2, 6, 64)), states((3, 2, 6, 64), seed=1), 0)
    cache.update(states((3, 2, 1, 64)), states((3, 2, 1, 64), seed=2), 0)
    layer = cache.layers[0]
    before = (layer.codes_k.clone(), layer.keys.clone())
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    assert torch.equal(layer.codes_k, before[0][[2, 0, 1]]) and torch.equal(layer.keys, before[1][[2, 0, 1]])
    cache.batch_select_indices(torch.tensor([1]))
    assert layer.codes_k.shape[0] == layer.keys.shape[0] == 1


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, error, message", [
    ({"bits": 5}, ValueError, "bits must be 2, 3 or 4, not 5"),
    ({"bits": True}, ValueError, "bits must be 2, 3 or 4"),
    ({"bits": 3, "value_bits": 8}, ValueError, "value_bits must be 2, 3 or 4"),
    ({"residual_length": -1}, ValueError, "residual_length must be an integer >= 0"),
    ({"residual_length": 1.5}, ValueError, "residual_length must be an integer"),
    ({"bits": 3.0}, ValueError, "bits must be 2, 3 or 4, not 3.0"),
])
def test_bad_settings_are_named(kw, error, message):
    with pytest.raises(error, match=message):
        IsoQuantCache(**kw)


def test_a_head_dim_that_is_not_a_multiple_of_the_block_is_named():
    cache = IsoQuantCache(bits=4, residual_length=np.int64(2))
    with pytest.raises(ValueError, match="layer 0: key head_dim 80 is not a multiple of 64"):
        cache.update(torch.zeros(1, 2, 3, 80), torch.zeros(1, 2, 3, 80), 0)
    with pytest.raises(ValueError, match="head_dim is 96, not a multiple of 64"):
        IsoQuantCache(bits=4, config=tiny_llama().config.__class__(head_dim=96, num_attention_heads=4))


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
