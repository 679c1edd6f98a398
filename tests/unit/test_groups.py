from quantkit.builders import groups

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "intermediate_size": 1536}


def test_smollm2_refuses_128_and_names_layers_and_working_sizes():
    msg = groups.check(groups.widths_from_config(SMOLLM2), 128)
    assert "q_proj/k_proj/v_proj (576 columns)" in msg and "o_proj (576 columns)" in msg
    assert "down_proj" not in msg  # 1536 = 12 * 128 is fine
    assert "16, 32, 64" in msg


def test_smollm2_accepts_64():
    assert groups.check(groups.widths_from_config(SMOLLM2), 64) is None


def test_workable_sizes_use_the_common_divisor():
    assert groups.workable_group_sizes({"a": 896, "b": 4864}) == [16, 32, 64, 128]
