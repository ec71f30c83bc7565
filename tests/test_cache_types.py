"""One registry of KV-cache types; numbers come from ggml, not from us."""
import pytest

from rotorquant import cache_types
from rotorquant._native import lib

UPSTREAM = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


def test_lists_upstreams_cache_types_then_ours():
    assert cache_types.names() == UPSTREAM + ["planar3", "iso3", "planar4", "iso4"]


@pytest.mark.parametrize("name, bits, block", [
    ("f32", 32.0, 1), ("f16", 16.0, 1), ("bf16", 16.0, 1),
    ("q8_0", 8.5, 32), ("q4_0", 4.5, 32), ("q4_1", 5.0, 32), ("iq4_nl", 4.5, 32),
    ("q5_0", 5.5, 32), ("q5_1", 6.0, 32),
])
def test_bits_per_element_and_block_size(name, bits, block):
    t = cache_types.get(name)
    assert (t.bits_per_element, t.block_size) == (bits, block)


def test_type_ids_are_the_header_enum_values():
    assert cache_types.get("q8_0").ggml_type == lib.GGML_TYPE_Q8_0 == 8
    assert all(t.ggml_type < lib.GGML_TYPE_COUNT for t in cache_types.all_types())


def test_only_quantized_types_need_flash_attention_for_v():
    needs = {t.name for t in cache_types.all_types() if t.needs_flash_attn}
    assert needs == {"q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1", "planar3", "iso3", "planar4", "iso4"}


def test_lookup_is_case_insensitive_and_idempotent():
    t = cache_types.get("Q8_0")
    assert t.name == "q8_0" and cache_types.get(t) is t


@pytest.mark.parametrize("bad", ["q3_0", "", None, 8])
def test_unknown_name_raises_value_error_listing_valid_names(bad):
    with pytest.raises(ValueError, match="valid types: f32, f16, bf16, q8_0"):
        cache_types.get(bad)
