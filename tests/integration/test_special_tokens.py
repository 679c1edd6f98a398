"""Issue 12, item 2: the reference, the GGUFs built from it and both engines agree on the special
tokens, and a greedy chat answer ends at <|im_end|> on vLLM and on llama.cpp.

transformers' GGUF loader wrote eos_token <|im_start|> (id 1) into the reference's
tokenizer_config.json; llama.cpp's converter reads that file, so every GGUF quantkit built said
eos 1 and llama.cpp warned `special_eos_id is not in special_eog_ids`. The packaged GGUF, the
reference's config.json and generation_config.json say eos 2 (<|im_end|>).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from quantkit import builders, loader, paths, prompts, sources
from quantkit.builders.gguf_convert import convert_hf_to_gguf
from quantkit.envs import llamacpp_build
from quantkit.envs.manager import python_for, runtime_env
from quantkit.execution.local import LocalExecutor
from quantkit.hardware import detect
from quantkit.recipes import load_recipe

ROLES = ("bos_token", "eos_token", "pad_token")
EOS = (2, "<|im_end|>")
EOG_WARNING = "special_eos_id is not in special_eog_ids"
MAX_TOKENS = 96


def _in_compressor(code: str, *args: str) -> dict:
    out = subprocess.run([str(python_for("compressor")), "-c", code, *args], env=runtime_env("compressor"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def gguf_tokens(gguf_file: Path) -> dict[str, tuple[int, str]]:
    """{role: (id, text)} from a GGUF's metadata (gguf-py, in the compressor env)."""
    code = ("import json, sys; from pathlib import Path; from quantkit.workers.reference import gguf_special_tokens;"
            "print(json.dumps(gguf_special_tokens(Path(sys.argv[1]))))")
    return {k: tuple(v) for k, v in _in_compressor(code, str(gguf_file)).items()}


def hf_tokens(model_dir: Path) -> dict[str, tuple[int, str]]:
    """{role: (id, text)} as transformers' tokenizer loads them from a checkpoint folder."""
    code = ("import json, sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]);"
            f"print(json.dumps({{r: [getattr(t, r + '_id'), getattr(t, r)] for r in {ROLES!r}}}))")
    return {k: tuple(v) for k, v in _in_compressor(code, str(model_dir)).items()}


def llama_cpp_load_log(gguf_file: Path, tmp_path: Path) -> str:
    """What llama.cpp prints while loading the file's vocabulary (one short llama-perplexity chunk)."""
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    out = subprocess.run([str(llamacpp_build.tool("llama-perplexity")), "-m", str(gguf_file), "-f", str(text),
                          "-c", "64", "-b", "64", "--chunks", "1", "-t", str(detect().cpu_cores), "-v"],
                         env=runtime_env("llamacpp"), capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def f16(reference):
    recipe = load_recipe(paths.recipes_dir() / "smollm2_gguf_f16.yaml")
    variant, _ = builders.build(recipe, recipe_file="recipes/smollm2_gguf_f16.yaml")
    return variant.path / variant.manifest["gguf_file"]


@pytest.fixture(scope="module")
def chat_prompt(reference):
    [p] = prompts.render(Path(reference.location), [prompts.chat("What is the capital of France?")])
    return list(p.token_ids)


def test_reference_tokenizer_configs_and_ggufs_agree_with_the_packaged_gguf(reference, f16):
    packaged = gguf_tokens(sources.embedded_gguf())
    assert packaged["eos_token"] == EOS and packaged["pad_token"] == EOS, packaged
    ref = Path(reference.location)
    assert hf_tokens(ref) == {r: packaged[r] for r in ROLES}
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((ref / name).read_text())
        assert {r: cfg[f"{r}_id"] for r in ROLES} == {r: packaged[r][0] for r in ROLES}, name
    assert {r: gguf_tokens(f16)[r] for r in ROLES} == {r: packaged[r] for r in ROLES}


def test_llama_cpp_loads_the_built_gguf_without_the_eog_warning(f16, tmp_path):
    log = llama_cpp_load_log(f16, tmp_path)
    assert EOG_WARNING not in log
    assert re.search(r"EOS token\s*=\s*2 '<\|im_end\|>'", log), log[-3000:]
    assert re.search(r"EOG token\s*=\s*2 '<\|im_end\|>'", log)
    assert not re.search(r"EOG token\s*=\s*1 '<\|im_start\|>'", log)  # the old eos made <|im_start|> end turns


def test_the_eog_check_catches_the_old_tokenizer_config(reference, tmp_path):
    """The check above can fail: a reference whose tokenizer_config.json says eos <|im_start|>
    (what transformers' loader wrote) converts to a GGUF that draws the warning."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(reference.location).iterdir():
        (broken / f.name).symlink_to(f)
    (broken / "tokenizer_config.json").unlink()
    cfg = json.loads((Path(reference.location) / "tokenizer_config.json").read_text())
    cfg.update(eos_token="<|im_start|>", eos_token_id=1)
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    gguf = convert_hf_to_gguf(broken, tmp_path / "broken-f16.gguf", tmp_path / "convert.log")
    try:
        assert gguf_tokens(gguf)["eos_token"] == (1, "<|im_start|>")
        log = llama_cpp_load_log(gguf, tmp_path)
        assert EOG_WARNING in log and re.search(r"EOG token\s*=\s*1 '<\|im_start\|>'", log)
    finally:
        shutil.rmtree(broken)
        gguf.unlink()


def _ends_at_im_end(worker, prompt: list[int], answer: dict) -> None:
    assert answer["finish_reason"] == "stop" and 0 < len(answer["token_ids"]) < MAX_TOKENS, answer
    ids = [t for t in answer["token_ids"] if t != EOS[0]]
    # the greedy token after the answer is <|im_end|>: the answer stopped there, not on another token
    [rows] = worker.call("logprobs", sequences=[prompt + ids + [EOS[0]]], top_k=1)
    assert rows[-1]["top"][0][0] == EOS[0], rows[-1]


def test_greedy_chat_stops_at_im_end_on_llama_cpp(f16, chat_prompt):
    target = loader.load(str(f16), settings={"n_ctx": 512})
    assert target.engine.name == "llamacpp"
    with LocalExecutor().start(target, label="eos") as worker:
        [[answer]] = worker.call("generate", prompts=[chat_prompt], temperature=0.0, max_tokens=MAX_TOKENS)
        _ends_at_im_end(worker, chat_prompt, answer)
    assert "Paris" in answer["text"], answer


def test_greedy_chat_stops_at_im_end_on_vllm(reference, chat_prompt):
    target = loader.load("reference", settings={"max_model_len": 1024})
    assert target.engine.name == "vllm"
    with LocalExecutor().start(target, label="eos") as worker:
        [[answer]] = worker.call("generate", prompts=[chat_prompt], temperature=0.0, max_tokens=MAX_TOKENS)
        _ends_at_im_end(worker, chat_prompt, answer)
    assert "Paris" in answer["text"], answer
    # vLLM reports the stop token among the ids when it stops on EOS
    assert answer["token_ids"][-1] == EOS[0], answer
