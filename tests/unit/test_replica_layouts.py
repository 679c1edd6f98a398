"""The replica sweep's plan (issue 10 item 2): equal shares of the cores, or of the GPUs on a CUDA
machine, and what each engine's server is told of its share. The CPU path runs for real in
tests/integration/test_replicas.py; the GPU path cannot run here (no CUDA machine with two GPUs and
vLLM), so its plan is checked: which servers start, on which GPUs, with which settings, and that
every figure records it."""

from __future__ import annotations

import pytest

from quantkit.engines import registry
from quantkit.engines.llamacpp.config import LlamaCppSettings
from quantkit.engines.vllm.config import VllmSettings
from quantkit.errors import QuantkitError
from quantkit.evaluation.groups import scaling
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run
from quantkit.hardware import Gpu, Hardware
from quantkit.loader import Target

CPU = Hardware("cpu", 2, 24.0, "x86_64", (), ("avx2",))
TWO_GPUS = Hardware("cpu", 16, 128.0, "x86_64", (Gpu("H100", 81920, "570", "9.0"),) * 2, ("avx2",))


def test_layouts_split_the_cores_into_equal_shares():
    assert scaling.layouts([0, 1], 2) == [("1x1", [[0]]), ("2x1", [[0], [1]]), ("1x2", [[0, 1]])]
    assert scaling.layouts([0, 1, 2, 3, 4], 2) == [("1x2", [[0, 1]]), ("2x2", [[0, 1], [2, 3]]),
                                                   ("1x4", [[0, 1, 2, 3]])]
    with pytest.raises(QuantkitError, match="need at least 4 cores"):
        scaling.layouts([0, 1], 4)


def test_layouts_over_gpus_say_so_in_their_labels():
    assert scaling.layouts([0, 1], 2, "GPU") == [("1x1 GPU", [[0]]), ("2x1 GPU", [[0], [1]]), ("1x2 GPU", [[0, 1]])]
    assert scaling.layouts([4, 5, 6, 7], 2, "GPU")[1] == ("2x2 GPU", [[4, 5], [6, 7]])
    with pytest.raises(QuantkitError, match="2 replicas need at least 2 GPUs; this machine has 1"):
        scaling.layouts([0], 2, "GPU")


def test_visible_gpus_respect_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert scaling.visible_gpus() == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8e6b2c1a")
    with pytest.raises(QuantkitError, match="indices, not UUIDs"):
        scaling.visible_gpus()


def test_each_engine_is_told_its_share_of_gpus():
    vllm, llamacpp = registry.get("vllm"), registry.get("llamacpp")
    assert vllm.uses_gpus(VllmSettings(), TWO_GPUS) and not vllm.uses_gpus(VllmSettings(), CPU)
    one, env = vllm.gpu_share(VllmSettings(), [1])
    assert one.tensor_parallel_size == 1 and env == {"CUDA_VISIBLE_DEVICES": "1"}
    both, env = vllm.gpu_share(VllmSettings(), [0, 1])  # one engine over both: tensor parallelism
    assert both.tensor_parallel_size == 2 and env == {"CUDA_VISIBLE_DEVICES": "0,1"}

    assert llamacpp.uses_gpus(LlamaCppSettings(n_gpu_layers=-1), TWO_GPUS)
    assert not llamacpp.uses_gpus(LlamaCppSettings(n_gpu_layers=0), TWO_GPUS)  # CPU decode asked for: cores
    assert not llamacpp.uses_gpus(LlamaCppSettings(n_gpu_layers=-1), CPU)
    share, env = llamacpp.gpu_share(LlamaCppSettings(n_gpu_layers=10), [1])
    assert share.n_gpu_layers == -1 and env == {"CUDA_VISIBLE_DEVICES": "1"}


class _RecordingServer:
    """Stands in for EngineServer where no GPU is: records what each server would be started with."""

    started: list[tuple] = []

    def __init__(self, target, cpus=None, env=None):
        self.url = f"http://replica-{len(self.started)}"
        self.started.append((target.settings.tensor_parallel_size, cpus, dict(env or {})))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_gpu_plan_starts_replicas_per_gpu_and_one_tensor_parallel_engine(monkeypatch, tmp_path):
    import quantkit.evaluation.serving as serving_mod
    import quantkit.server as server_mod

    monkeypatch.setattr(scaling.hardware, "detect", lambda: TWO_GPUS)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(server_mod, "EngineServer", _RecordingServer)
    _RecordingServer.started = []
    swept: list[list[str]] = []

    def sweep(urls, model, prompts, levels, out, repeats):
        swept.append(list(urls))
        return [{"concurrency": c, "output_tokens_per_s": 10.0 * len(urls) * c,
                 "output_tokens_per_s_spread": (9.0 * len(urls) * c, 11.0 * len(urls) * c),
                 "requests_per_s": 0.1 * c, "ttft_median_s": 0.02, "ttft_p90_s": 0.03, "itl_median_s": 0.005,
                 "itl_p90_s": 0.006, "requests": c, "repeats": repeats} for c in levels]

    monkeypatch.setattr(serving_mod, "sweep", sweep)
    target = Target("m", tmp_path / "m", "safetensors", registry.get("vllm"), VllmSettings(), "auto")
    cfg = CompareConfig.make(True, groups=("scaling",), replicas=2)
    inputs = Inputs([], [], [], 0, [], [[1, 2]], 100, tmp_path)
    figs = scaling.ScalingGroup().measure(Run(target, None, inputs, cfg, {}, "variant"))

    # 1x1: one server on GPU 0; 2x1: one per GPU; 1x2: one engine over both with tensor_parallel_size 2
    assert _RecordingServer.started == [
        (1, None, {"CUDA_VISIBLE_DEVICES": "0"}),
        (1, None, {"CUDA_VISIBLE_DEVICES": "0"}), (1, None, {"CUDA_VISIBLE_DEVICES": "1"}),
        (2, None, {"CUDA_VISIBLE_DEVICES": "0,1"})]
    assert [len(u) for u in swept] == [1, 2, 1]
    by = {(f.metric, f.params["layout"], f.params["concurrency"]): f for f in figs}
    c = cfg.serving_levels[-1]
    tp = by[("output_tokens_per_s", "1x2 GPU", c)].conditions
    assert tp["unit"] == "GPU" and tp["gpus"] == [[0, 1]] and tp["pinned"] == "CUDA_VISIBLE_DEVICES"
    assert tp["share_settings"] == {"tensor_parallel_size": 2}
    assert by[("output_tokens_per_s", "2x1 GPU", c)].conditions["share_settings"] == {}
    assert by[("scaling_efficiency", "2x1 GPU", c)].value == pytest.approx(1.0)
