from quantkit.engines.llamacpp.config import LlamaCppSettings
from quantkit.evaluation.crosscheck import llama_bench_flags


def test_llama_bench_gets_the_targets_settings():
    flags = llama_bench_flags(LlamaCppSettings(n_gpu_layers=-1, flash_attn=True, n_batch=256, cache_type_k="q8_0",
                                               cache_type_v="q4_0").model_dump(), threads=16)
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert pairs == {"-t": "16", "-ngl": "999", "-fa": "1", "-b": "256", "-ctk": "q8_0", "-ctv": "q4_0"}


def test_cpu_defaults_turn_off_what_llama_bench_would_turn_on():
    pairs = dict(zip(*[iter(llama_bench_flags(LlamaCppSettings().model_dump(), threads=2))] * 2))
    assert pairs["-ngl"] == "0" and pairs["-fa"] == "0" and pairs["-b"] == str(LlamaCppSettings().n_batch)
