import pytest

from quantkit.evaluation.memory import kv_bytes_per_token

# SmolLM2-135M: 30 layers, 9 attention heads of 64 (hidden 576), 3 KV heads
SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "hidden_size": 576, "num_key_value_heads": 3}


def test_kv_bytes_per_token_by_hand():
    assert kv_bytes_per_token(SMOLLM2, "auto (model dtype)") == 30 * 3 * 64 * 2 * 2 == 23040
    assert kv_bytes_per_token(SMOLLM2, "fp8") == 11520
    assert kv_bytes_per_token(SMOLLM2, "q8_0") == pytest.approx(30 * 3 * 64 * 2 * 34 / 32)


def test_mixed_llama_cpp_k_and_v_types_count_each_side():
    assert kv_bytes_per_token(SMOLLM2, "K q8_0 / V f16") == pytest.approx(30 * 3 * 64 * (34 / 32 + 2)) == 17640
    assert kv_bytes_per_token(SMOLLM2, "mystery") is None
