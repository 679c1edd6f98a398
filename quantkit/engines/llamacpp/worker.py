"""llama.cpp engine worker: runs inside the `llamacpp` env, speaks quantkit.workers.protocol.

Usage: python -m quantkit.engines.llamacpp.worker '<json engine settings>'
"""

from __future__ import annotations

import json
import os
import sys
import time

from quantkit.workers.procinfo import peak_rss
from quantkit.workers.protocol import claim_stdout, serve


def main(settings: dict) -> None:
    out = claim_stdout()
    import llama_cpp
    from llama_cpp import Llama

    t0 = time.time()
    model = settings.pop("model")
    kv = {"type_k": settings.pop("cache_type_k"), "type_v": settings.pop("cache_type_v")}
    kv_ids = {k: getattr(llama_cpp, f"GGML_TYPE_{v.upper()}") for k, v in kv.items()}
    llm = Llama(model_path=model, verbose=False, logits_all=True, **kv_ids, **settings)
    load_seconds = time.time() - t0

    def generate(prompts: list[list[int]], temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 max_tokens: int = 64, seed: int | None = None, stop: list[str] | None = None, n: int = 1) -> list:
        """llama.cpp's own sampling loop (Llama.generate) so that token ids come back with the text.
        Sample i is seeded with seed + i (vLLM's convention for n > 1); greedy samples are identical
        by definition, so one is generated and repeated, as the vLLM worker does."""
        eos = llm.token_eos()
        draws = 1 if temperature == 0 else n
        results = []
        for prompt in prompts:
            samples = []
            for i in range(draws):
                if seed is not None:
                    llm.set_seed(seed + i)
                ids: list[int] = []
                finish = "length"
                text = ""
                for tok in llm.generate(list(prompt), temp=temperature, top_p=top_p,
                                        top_k=max(0, top_k), min_p=0.0, reset=True):
                    if tok == eos or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                        finish = "stop"
                        break
                    ids.append(tok)
                    text = llm.detokenize(ids).decode("utf-8", errors="replace")
                    if stop and any(s in text for s in stop):
                        text = text[: min(text.index(s) for s in stop if s in text)]
                        finish = "stop"
                        break
                    if len(ids) >= max_tokens:
                        break
                samples.append({"text": text, "token_ids": ids, "finish_reason": finish})
            results.append(samples * n if draws == 1 else samples)
        return results

    def logprobs(sequences: list[list[int]], top_k: int = 20) -> list:
        """For each sequence, per position i>=1: {"token": logprob of ids[i], "top": [[id, logprob], ...]}.

        llama.cpp returns full logits for every position, so the top-k here is a truncation we
        choose for uniformity with vLLM, not the engine's limit."""
        import numpy as np

        out_all = []
        for token_ids in sequences:
            llm.reset()
            llm.eval(token_ids)
            logits = np.asarray(llm.scores[: len(token_ids)], dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            rows = []
            for pos in range(1, len(token_ids)):
                dist = logp[pos - 1]
                top = np.argpartition(-dist, top_k)[:top_k]
                top = top[np.argsort(-dist[top])]
                rows.append({"token": float(dist[token_ids[pos]]), "top": [[int(t), float(dist[t])] for t in top]})
            out_all.append(rows)
        return out_all

    def topk_logprobs(sequences: list[list[int]], score_from: int, top_k: int,
                      ref_ids: list[dict] | None = None) -> list[dict]:
        """Fidelity rows (contract in quantkit/evaluation/fidelity.py) from llama.cpp's full logits:
        per sequence, rows predict tokens score_from..L-1 (logits at positions score_from-1..L-2);
        the arithmetic is `reduce_rows`."""
        import numpy as np

        from quantkit.workers import arrays

        if ref_ids is not None and len(ref_ids) != len(sequences):
            raise ValueError(f"ref_ids has {len(ref_ids)} entries for {len(sequences)} sequences")
        answers = []
        for i, seq in enumerate(sequences):
            length = len(seq)
            if not 1 <= score_from < length:
                raise ValueError(f"score_from {score_from} outside 1..{length - 1} for a sequence of {length} tokens")
            ids = arrays.decode(ref_ids[i]) if ref_ids is not None else None
            if ids is not None and (ids.ndim != 2 or ids.shape[0] != length - score_from):
                raise ValueError(f"ref_ids[{i}] has shape {ids.shape}, expected ({length - score_from}, K)")
            llm.reset()
            llm.eval(list(seq))
            rows = reduce_rows(np.asarray(llm.scores[score_from - 1:length - 1], dtype=np.float32),
                               np.asarray(seq[score_from:]), top_k, ids)
            answers.append({k: arrays.encode(v) for k, v in rows.items()})
        return answers

    def bench(prompts: list[list[int]], max_tokens: int, repeats: int = 3) -> dict:
        """Offline throughput the way llama.cpp itself runs (llama-batched-bench, llama-server's
        slots): llama.cpp's C API through the binding, every prompt one sequence of one batch. The
        prompts are decoded together (packed into decodes of at most n_batch tokens, logits for
        each prompt's last token only), then every llama_decode carries one token per sequence,
        and each token is picked greedily in C (llama_sampler_sample with llama.cpp's greedy
        sampler); a fixed number of output tokens, EOS ignored. No Python work per logit:
        llama-cpp-python's Llama.generate copies every token's logits into numpy and samples there,
        which read 0.83-0.87 of llama-bench on 2 cores.

        The worker's own context holds one sequence, so a context of its own, with the worker's
        settings (threads, n_batch, KV types, flash attention) and room for these sequences, is
        made for the call and freed after it; every run starts from an empty KV cache (it pays its
        prefill). Each run reports its prefill (prompts -> first token of every sequence), its
        decode phase (the remaining tokens), which is what llama-bench's tg measures, and the first
        sequence's tokens (a check that the loop decodes what `generate` decodes)."""
        n_seq = len(prompts)
        per_seq = -(-(max(len(p) for p in prompts) + max_tokens) // 256) * 256
        cparams = type(llm.context_params).from_buffer_copy(llm.context_params)
        cparams.n_seq_max = n_seq
        cparams.n_ctx = per_seq * n_seq  # each sequence gets n_ctx / n_seq_max (KV not unified)
        cparams.n_batch = max(cparams.n_batch, n_seq)
        cparams.n_ubatch = max(cparams.n_ubatch, n_seq)
        ctx = llama_cpp.llama_init_from_model(llm.model, cparams)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {n_seq} sequences of {per_seq} tokens")
        smpl = llama_cpp.llama_sampler_init_greedy()
        batch = llama_cpp.llama_batch_init(cparams.n_batch, 0, 1)
        mem = llama_cpp.llama_get_memory(ctx)

        def decode(items: list[tuple[int, int, int, bool]]) -> list[int]:
            """One llama_decode of (token, position, sequence, wants logits); greedy picks, in order."""
            for i, (tok, pos, seq, want) in enumerate(items):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, want
            batch.n_tokens = len(items)
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            return [llama_cpp.llama_sampler_sample(smpl, ctx, i) for i, it in enumerate(items) if it[3]]

        def run(seqs: list[list[int]], n_out: int) -> dict:
            llama_cpp.llama_memory_clear(mem, True)
            t0 = time.perf_counter()
            flat = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(seqs) for pos, tok in enumerate(p)]
            last: list[int] = []
            for i in range(0, len(flat), cparams.n_batch):
                last += decode(flat[i:i + cparams.n_batch])
            t_first = time.perf_counter()
            first_seq = [last[0]]
            for step in range(1, n_out):
                last = decode([(tok, len(p) + step - 1, s, True) for s, (tok, p) in enumerate(zip(last, seqs))])
                first_seq.append(last[0])
            t_end = time.perf_counter()
            return {"seconds": t_end - t0, "output_tokens": len(seqs) * n_out, "prefill_seconds": t_first - t0,
                    "decode_tokens": len(seqs) * (n_out - 1), "decode_seconds": t_end - t_first,
                    "first_sequence_tokens": first_seq}

        try:
            run([p[:8] for p in prompts], 4)  # warm-up
            runs = [run(prompts, max_tokens) for _ in range(repeats)]
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_sampler_free(smpl)
            llama_cpp.llama_free(ctx)
        return {"runs": runs, "sequences": n_seq,
                "method": f"llama.cpp C API: {n_seq} sequence(s) in one batch, greedy in C"}

    def memory() -> dict:
        import psutil

        proc = psutil.Process()
        return {"rss_bytes": proc.memory_info().rss, "peak_rss_bytes": peak_rss(proc.pid),
                "n_ctx": llm.n_ctx(), "weights_bytes": int(llama_cpp.llama_model_size(llm.model))}

    def info() -> dict:
        vocab = llm._model.vocab
        return {"engine": "llama.cpp", "version": llama_cpp.__version__, "model": model,
                "load_seconds": load_seconds, "pid": os.getpid(), "n_vocab": llm.n_vocab(),
                # what llama.cpp's own tools (llama-perplexity) do with a text: a BOS token first?
                "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)), "bos": int(llm.token_bos())}

    serve({"generate": generate, "logprobs": logprobs, "topk_logprobs": topk_logprobs, "bench": bench, "memory": memory,
           "info": info}, out)


def reduce_rows(logits, targets, top_k: int, ids=None) -> dict:
    """The contract's arrays for rows of float32 logits [n, V]: log-probs of the given ids (or of
    the top-K), the exact mass outside them, the argmax and the actual token's log-prob.

    Exact, and cheap enough to run on every scored position: the full-vocabulary passes run once
    each in float32 (llama.cpp's logits are float32): exp(x - max), the top-K (argpartition), and
    the complement's sum after zeroing the chosen ids in place, accumulated in float64; so the tail
    is summed over itself, never obtained as 1 - sum(top-K). The normaliser is tail + top-K and
    every log is taken in float64 (agreement with a float64 log-softmax ~1e-7 relative). Rows
    whose whole complement underflows float32's exp (more than ~100 nats below the max) are
    recomputed in float64. The same reduction as the vLLM worker's (engines/vllm/topk.py)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float32)
    n = len(x)
    m = x.max(axis=1, keepdims=True)
    m64 = m.astype(np.float64)
    if ids is None:
        k = min(int(top_k), x.shape[1])
        part = np.argpartition(-x, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(part, order, axis=1)
    ids = np.asarray(ids, dtype=np.int64)
    vals = np.take_along_axis(x, ids, axis=1).astype(np.float64)
    e = np.exp(x - m)
    np.put_along_axis(e, ids, 0.0, axis=1)
    tail_sum = e.sum(axis=1, dtype=np.float64)
    logz = m64[:, 0] + np.log(tail_sum + np.exp(vals - m64).sum(axis=1))
    with np.errstate(divide="ignore"):
        tail = np.log(tail_sum) + m64[:, 0] - logz
    for r in np.flatnonzero(tail_sum == 0):  # empty complement (stays -inf) or float32 underflow
        rest = np.delete(x[r].astype(np.float64), ids[r])
        if rest.size:
            tail[r] = np.logaddexp.reduce(rest) - logz[r]
    return {"ids": ids.astype(np.int32), "logprobs": (vals - logz[:, None]).astype(np.float32),
            "tail_logprob": tail, "argmax": x.argmax(axis=1).astype(np.int32),
            "token_logprob": x[np.arange(n), np.asarray(targets)].astype(np.float64) - logz}


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
