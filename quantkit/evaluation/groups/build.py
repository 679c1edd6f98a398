"""Build: what making the variant cost, read from its manifest (no engine runs).

The build's wall time, the peak resident memory of its heaviest step, the peak GPU memory that
torch allocated on a CUDA build (llm-compressor and AutoAWQ report `torch.cuda.max_memory_allocated`),
and the calibration tokens it used. Each figure's conditions say where and how the build ran
(`built_on`, the device and dtype it calibrated in, the tools' versions), since a build on a GPU
and one on two CPU cores are not the same cost. The reference and a bare GGUF file were never built
by quantkit: one figure says so, without a value."""

from __future__ import annotations

from pathlib import Path

from quantkit import variants
from quantkit.evaluation.groups.base import Group
from quantkit.evaluation.groups.run import CompareConfig, Inputs, Run
from quantkit.results.store import Figure

# manifest field -> (metric, unit); a field the build did not record (no GPU, no calibration) is left out
BUILD_FIGURES = (("build_seconds", "build_seconds", "s"), ("peak_memory_mib", "build_peak_rss_mib", "MiB"),
                 ("peak_gpu_memory_mib", "build_peak_gpu_mib", "MiB"), ("calibration_tokens", "calibration_tokens", "tokens"))


class BuildGroup(Group):
    name = "build"
    needs = "own"  # starts nothing: the manifest holds it all
    order = 0

    def conditions(self, cfg: CompareConfig, inputs: Inputs) -> dict:
        return {}  # the model's identity (recipe fingerprint and build) is the whole key

    def measure(self, run: Run) -> list[Figure]:
        name = run.target.name
        if run.is_reference or Path(name).suffix == ".gguf":
            why = ("the reference: prepared by `quantkit setup`, not built" if run.is_reference
                   else "a GGUF file given as is: quantkit did not build it")
            return [run.fig(self.name, "build_seconds", None, None, 0, "s", text=why)]
        m = variants.get(name).manifest
        settings = m.get("build_settings") or {}
        cond = {"built_on": (m.get("built_on") or {}).get("hardware"), "method": (m.get("recipe") or {}).get("method"),
                "device": settings.get("device") or "cpu", "calibration_dtype": settings.get("calibration_dtype"),
                "torch_threads": settings.get("torch_threads"), "tool_versions": m.get("tool_versions"),
                "started": m.get("started"), "finished": m.get("finished"),
                "peak_rss": "the largest resident set of any process of the build (workers, llama.cpp tools)"}
        figs = [run.fig(self.name, metric, float(m[field]), None, 1, unit, conditions=dict(cond))
                for field, metric, unit in BUILD_FIGURES if m.get(field) is not None]
        return figs or [run.fig(self.name, "build_seconds", None, None, 0, "s", conditions=cond,
                                text="the manifest records no build figures (built by an older quantkit)")]
