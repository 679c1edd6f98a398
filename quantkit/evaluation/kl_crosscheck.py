"""Does quantkit's KL divergence agree with `llama-perplexity --kl-divergence` on the same tokens?

    python -m quantkit.evaluation.kl_crosscheck VARIANT [VARIANT ...] [--windows 16] [--window-len 512]
                                                [--top-k 128] [--full-windows 4] [--keep DIR]

For GGUF variants of the embedded model, against the f16 GGUF (built when missing):
1. quantkit's fidelity text (compare.fidelity_text) is written to a file and
   `llama-perplexity -m F16 -f TEXT -c N --chunks W -b N --kl-divergence-base BASE.kld` stores the
   f16 GGUF's log-probs; `llama-perplexity -m VARIANT --kl-divergence-base BASE.kld --kl-divergence`
   scores each variant against it (one base file shared by every variant).
2. The tokens llama-perplexity used are read back from BASE.kld and checked against quantkit's
   reference-tokenized windows (the report says whether they are identical). quantkit then scores
   exactly llama-perplexity's chunks, as llama-perplexity feeds them (BOS in place of each chunk's
   first token when the model asks for one), through its own llama.cpp worker: the f16 GGUF's
   top-K, then each variant on those ids (the `topk_logprobs` op compare uses). Scored positions
   match llama-perplexity's: logits at N/2 .. N-2 of each chunk (score_from = N/2 + 1).
3. Optionally (`--full-windows`), the full-vocabulary KL on the first windows from both models'
   raw logits (quantkit.workers.full_kl): how close quantkit's top-K + tail lower bound is.
Prints both tools' figures and their ratio: mean, median, p99 and max KLD, same top-1 with its
uncertainty, PPL ratio, RMS Δp. Exit code 1 when mean KLD differs by more than 2% or same-top-1 by
more than 0.5 points.

Known differences, by design of llama-perplexity: it stores the base log-probs as 16-bit integers
(range/65535 per step) and sums p log(p/q) over base tokens with log p > -16 without a tail
bucket, while quantkit's KL is exact over the base's top-K plus a tail bucket.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantkit import loader, paths, sources
from quantkit.envs import llamacpp_build
from quantkit.envs.run import run_worker
from quantkit.errors import QuantkitError
from quantkit.evaluation import fidelity
from quantkit.evaluation.compare import (
    CompareConfig,
    build_engine_baseline,
    fidelity_text,
    prepare_inputs,
    windows_per_call,
)
from quantkit.execution.local import LocalExecutor

KLD_TOLERANCE = 0.02  # relative, mean KLD
TOP1_TOLERANCE = 0.005  # absolute, same top-1 (0.5 points)

DEFAULT_TOP_K: int = CompareConfig.model_fields["top_k"].default  # compare's K, so the cross-check measures what compare stores


@dataclass
class KldFile:
    """The header of a llama-perplexity base log-prob file (perplexity.cpp: "_logits_", n_ctx,
    n_vocab, n_chunk, then the n_ctx * n_chunk tokens it evaluated, before BOS replacement)."""

    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray


def read_kld_header(path: Path) -> KldFile:
    with open(path, "rb") as f:
        if f.read(8) != b"_logits_":
            raise QuantkitError(f"{path} is not a llama-perplexity log-prob file (no _logits_ magic)")
        n_ctx, n_vocab, n_chunk = (int(x) for x in np.frombuffer(f.read(12), dtype="<u4"))
        tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype="<i4")
    if len(tokens) != n_ctx * n_chunk:
        raise QuantkitError(f"{path}: truncated token block ({len(tokens)} of {n_ctx * n_chunk})")
    return KldFile(n_ctx, n_vocab, n_chunk, tokens.copy())


_NUM = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf)"
_PATTERNS = {
    "ppl_ratio": rf"Mean PPL\(Q\)/PPL\(base\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "kld_mean": rf"Mean\s+KLD:\s*{_NUM}\s*±\s*{_NUM}",
    "kld_max": rf"Maximum KLD:\s*{_NUM}",
    "kld_p99": rf"99\.0%\s+KLD:\s*{_NUM}",
    "kld_p90": rf"90\.0%\s+KLD:\s*{_NUM}",
    "kld_median": rf"Median\s+KLD:\s*{_NUM}",
    "dp_mean": rf"Mean\s+Δp:\s*{_NUM}\s*±\s*{_NUM}\s*%",
    "dp_rms": rf"RMS Δp\s*:\s*{_NUM}\s*±\s*{_NUM}\s*%",
    "top1": rf"Same top p:\s*{_NUM}\s*±\s*{_NUM}\s*%",
}
_PERCENT = {"dp_mean", "dp_rms", "top1"}


def parse_llama_perplexity(text: str) -> dict[str, tuple[float, float | None]]:
    """{statistic: (value, uncertainty or None)} from llama-perplexity's KL summary (percentages as
    fractions)."""
    out = {}
    for name, pattern in _PATTERNS.items():
        m = re.search(pattern, text)
        if m is None:
            raise QuantkitError(f"llama-perplexity printed no {name!r} line; its output ends with:\n{text[-1500:]}")
        scale = 0.01 if name in _PERCENT else 1.0
        vals = [float(g) * scale for g in m.groups()]
        out[name] = (vals[0], vals[1] if len(vals) > 1 else None)
    return out


def _llama_perplexity(args: list[str], log: Path) -> str:
    cmd = [str(llamacpp_build.tool("llama-perplexity")), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log.write_text(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise QuantkitError(f"llama-perplexity failed (exit {proc.returncode}); see {log}")
    return proc.stdout + proc.stderr


def _gguf(name: str) -> Path:
    _, path, fmt = loader.locate(name)
    if fmt != "gguf":
        raise QuantkitError(f"{name} is not a GGUF variant; the llama-perplexity cross-check needs GGUF files")
    return path


def engine_flags(settings: dict) -> list[str]:
    """llama-perplexity flags for the settings quantkit's worker runs with (its own defaults differ:
    flash attention "auto", all layers on a GPU)."""
    ngl = settings.get("n_gpu_layers", 0)
    return ["-fa", "on" if settings.get("flash_attn") else "off", "-ngl", "all" if ngl < 0 else str(ngl),
            "-ctk", settings.get("cache_type_k", "f16"), "-ctv", settings.get("cache_type_v", "f16")]


def _start(name: str, window_len: int):
    return LocalExecutor().start(loader.load(name, settings={"n_ctx": window_len + 64}), label="kl-crosscheck")


def _score(worker, windows: list[list[int]], score_from: int, top_k: int, per_call: int,
           base: fidelity.TopK | None = None) -> fidelity.TopK:
    parts = []
    for i in range(0, len(windows), per_call):
        ids = base.window_ids(i, i + per_call) if base is not None else None
        parts.append(fidelity.TopK.from_answers(
            worker.call("topk_logprobs", sequences=windows[i:i + per_call], score_from=score_from, top_k=top_k,
                        ref_ids=ids)))
    return fidelity.TopK.concat(parts)


def tokenization_check(kld: KldFile, stream: list[int], add_bos: bool, bos: int) -> dict:
    """Do llama-perplexity's tokens equal quantkit's reference-tokenized stream (after its BOS)?"""
    llama = kld.tokens.tolist()
    offset = 1 if add_bos else 0
    if add_bos and llama[0] != bos:
        return {"identical": False, "detail": f"expected BOS {bos} first, got {llama[0]}"}
    ours = stream[:len(llama) - offset]
    theirs = llama[offset:offset + len(ours)]
    mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    return {"identical": not mismatches and len(ours) == len(llama) - offset, "compared": len(ours),
            "mismatches": len(mismatches), "first_mismatch": mismatches[0] if mismatches else None,
            "bos_prepended": add_bos}


def run(variants: list[str], *, windows: int = 16, window_len: int = 512, top_k: int = DEFAULT_TOP_K,
        full_windows: int = 0,
        work: Path | None = None, threads: int | None = None, echo=print) -> dict:
    """Everything the cross-check measures, as a dict (the CLI prints it; the test asserts on it)."""
    base_name = build_engine_baseline("reference", "llamacpp")
    cfg = CompareConfig(window_len=window_len, windows=windows, top_k=top_k)
    work = Path(work or tempfile.mkdtemp(prefix="kl-crosscheck-"))
    work.mkdir(parents=True, exist_ok=True)
    text_file, base_kld = work / "text.txt", work / "base.kld"
    text_file.write_text(fidelity_text(cfg), encoding="utf-8")
    common = ["-f", str(text_file), "-c", str(window_len), "-b", str(window_len), "--chunks", str(windows),
              *engine_flags(loader.load(base_name, settings={"n_ctx": window_len + 64}).settings.model_dump())]
    common += ["-t", str(threads)] if threads else []
    echo(f"llama-perplexity: base {base_name} -> {base_kld}")
    _llama_perplexity(["-m", str(_gguf(base_name)), *common, "--kl-divergence-base", str(base_kld)],
                      work / "base.log")
    kld = read_kld_header(base_kld)
    if kld.n_chunk != windows or kld.n_ctx != window_len:
        raise QuantkitError(f"llama-perplexity used {kld.n_chunk} chunks of {kld.n_ctx}, not {windows} of {window_len}")
    echo(f"quantkit: {base_name} top-{top_k} on the same {windows} chunks")
    score_from = window_len // 2 + 1  # llama-perplexity: logits at n_ctx/2 .. n_ctx-2
    per_call = windows_per_call(cfg)
    raw = [kld.tokens[i * window_len:(i + 1) * window_len].tolist() for i in range(windows)]
    with _start(base_name, window_len) as w:
        info = w.call("info")
        chunks = [[info["bos"], *c[1:]] if info["add_bos"] else c for c in raw]  # as llama-perplexity feeds them
        base = _score(w, chunks, score_from, top_k, per_call)
    inputs = prepare_inputs(cfg, Path(sources.resolve("default").location))
    stream = [t for w in inputs.windows for t in w]
    result = {"base": base_name, "windows": windows, "window_len": window_len, "top_k": top_k,
              "scored_positions": len(base), "tokenization": tokenization_check(kld, stream, info["add_bos"],
                                                                                  info["bos"]),
              "llama_cpp": info["version"], "variants": {}}
    for name in variants:
        echo(f"llama-perplexity --kl-divergence: {name}")
        out = _llama_perplexity(["-m", str(_gguf(name)), *common, "--kl-divergence-base", str(base_kld),
                                 "--kl-divergence"], work / f"{name}.log")
        theirs = parse_llama_perplexity(out)
        echo(f"quantkit: {name} on {base_name}'s top-{top_k}")
        with _start(name, window_len) as w:
            model = _score(w, chunks, score_from, top_k, per_call, base)
        ours = fidelity.summarize(base, model)
        entry = {"quantkit": ours.as_dict(), "llama_perplexity": {k: list(v) for k, v in theirs.items()},
                 "command": f"llama-perplexity -m {_gguf(name)} {' '.join(common)} --kl-divergence-base "
                            f"{base_kld} --kl-divergence"}
        entry["checks"] = checks(ours, theirs)
        if full_windows:
            entry["full_vocabulary"] = full_kl_check(base_name, name, chunks[:full_windows], score_from, base, model,
                                                     work)
        result["variants"][name] = entry
    result["base_command"] = (f"llama-perplexity -m {_gguf(base_name)} {' '.join(common)} "
                              f"--kl-divergence-base {base_kld}")
    return result


def checks(ours: fidelity.Fidelity, theirs: dict) -> dict:
    kld_ratio = ours.kld_mean / theirs["kld_mean"][0] if theirs["kld_mean"][0] else float("nan")
    top1_diff = ours.top1 - theirs["top1"][0]
    return {"kld_mean_ratio": kld_ratio, "kld_ok": abs(kld_ratio - 1) <= KLD_TOLERANCE,
            "top1_diff": top1_diff, "top1_ok": abs(top1_diff) <= TOP1_TOLERANCE}


def full_kl_check(base_name: str, name: str, chunks: list[list[int]], score_from: int, base: fidelity.TopK,
                  model: fidelity.TopK, work: Path) -> dict:
    """quantkit's top-K + tail KL against the full-vocabulary KL from raw logits, same positions."""
    wfile, out = work / "full-windows.json", work / f"{name}-full.npz"
    wfile.write_text(json.dumps(chunks))
    run_worker("llamacpp", "quantkit.workers.full_kl", [_gguf(base_name), _gguf(name), wfile, str(score_from), out],
               paths.cache_dir() / "logs" / "full_kl.log")
    with np.load(out) as z:
        full, tails, ks = z["kl"], z["base_tail_k"], z["ks"]
    n = len(full)
    b, m = base.slice_windows(0, len(chunks)), model.slice_windows(0, len(chunks))
    res: dict[str, Any] = {"positions": n, "full_kld_mean": float(full.mean())}
    for k in (100, base.k):
        kl = fidelity.kl_per_position(b.truncate(k), m.truncate(k))
        res[f"top{k}"] = {"kld_mean": float(kl.mean()), "ratio_to_full": float(kl.mean() / full.mean()),
                          "max_excess": float((kl - full).max()),
                          "base_tail_mass_mean": float(tails[:, list(ks).index(k)].mean()) if k in ks else None}
    return res


def report(result: dict) -> tuple[str, bool]:
    head = (f"KL cross-check: {len(result['variants'])} variant(s) against {result['base']} on {result['windows']} "
            f"x {result['window_len']} tokens ({result['scored_positions']} scored positions, second halves as "
            f"llama-perplexity), quantkit K={result['top_k']}, llama.cpp {result['llama_cpp']}")
    lines = [head,
             f"tokenization: {json.dumps(result['tokenization'])}",
             f"base: {result['base_command']}"]
    ok = True
    for name, e in result["variants"].items():
        q, ll, c = e["quantkit"], e["llama_perplexity"], e["checks"]
        lines += ["", f"{name}", f"  {e['command']}", f"  {'statistic':<16}{'quantkit':>22}{'llama-perplexity':>22}{'ratio':>9}"]
        rows = [("KLD mean", q["kld_mean"], q["kld_stderr"], *ll["kld_mean"]),
                ("KLD median", q["kld_median"], None, *ll["kld_median"]),
                ("KLD p90", q["kld_p90"], None, *ll["kld_p90"]),
                ("KLD p99", q["kld_p99"], None, *ll["kld_p99"]),
                ("KLD max", q["kld_max"], None, *ll["kld_max"]),
                ("same top-1", q["top1"], q["top1_stderr"], *ll["top1"]),
                ("PPL ratio", q["ppl_ratio"], q["ppl_ratio_stderr"], *ll["ppl_ratio"]),
                ("RMS Δp", q["dp_rms"], q["dp_rms_stderr"], *ll["dp_rms"])]
        for label, a, ae, b, be in rows:
            def fmt(v, e):
                return f"{v:.6f}" + (f" ± {e:.6f}" if e is not None else "")
            lines.append(f"  {label:<16}{fmt(a, ae):>22}{fmt(b, be):>22}{(a / b if b else float('nan')):>9.4f}")
        verdict = (f"  mean KLD ratio {c['kld_mean_ratio']:.4f} ({'within' if c['kld_ok'] else 'OUTSIDE'} "
                   f"±{KLD_TOLERANCE:.0%}); same top-1 difference {100 * c['top1_diff']:+.2f} points "
                   f"({'within' if c['top1_ok'] else 'OUTSIDE'} ±{100 * TOP1_TOLERANCE:.1f})")
        lines.append(verdict)
        if "full_vocabulary" in e:
            f = e["full_vocabulary"]
            lines.append(f"  full-vocabulary KL on the first {f['positions']} positions: {f['full_kld_mean']:.6f}; "
                         + "; ".join(f"top-{k[3:]} + tail {v['kld_mean']:.6f} ({v['ratio_to_full']:.4f} of full, "
                                     f"base tail mass {v['base_tail_mass_mean']:.4f})"
                                     for k, v in f.items() if k.startswith("top")))
        ok = ok and c["kld_ok"] and c["top1_ok"]
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantkit.evaluation.kl_crosscheck", description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="+", help="GGUF variants of the embedded model (e.g. smollm2-gguf-q4_k_m)")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--window-len", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="quantkit's K (default: compare's)")
    ap.add_argument("--full-windows", type=int, default=0, help="also compute the full-vocabulary KL on this many windows")
    ap.add_argument("--threads", type=int, default=None, help="llama-perplexity -t (default: its own)")
    ap.add_argument("--keep", type=Path, default=None, help="folder for the text, base.kld and logs (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the full result here")
    a = ap.parse_args(argv)
    try:
        result = run(a.variants, windows=a.windows, window_len=a.window_len, top_k=a.top_k,
                     full_windows=a.full_windows, work=a.keep, threads=a.threads,
                     echo=lambda m: print(m, file=sys.stderr, flush=True))
    except QuantkitError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    text, ok = report(result)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=float))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
