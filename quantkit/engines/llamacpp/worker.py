"""llama.cpp engine worker: runs inside the `llamacpp` env, speaks quantkit.workers.protocol.

Usage: python -m quantkit.engines.llamacpp.worker '<json engine settings>'
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import sys
import time

from quantkit.workers.procinfo import peak_rss
from quantkit.workers.protocol import claim_stdout, serve

# Sequences that `generate` decodes together (llama-server's parallel slots). Each llama_decode
# runs one graph, whose ops the CPU threads pass in lockstep; up to 8 sequences per graph is up to
# 8x fewer graphs per generated token. That matters most on shared cores: a thread that waits at
# an op's barrier for a descheduled partner waits out a scheduler slice (measured on 2 cores at
# load average 5-9: one-token decodes of the 135M Q8_0 model took 0.1 to 9 s each). The call's
# own context holds GENERATE_SLOTS x (longest prompt + max_tokens) KV cells (135M model, f16 KV:
# about 23 KB a cell).
GENERATE_SLOTS = 8
# Sequences that `logprobs` scores in one decode (at most n_batch tokens together).
LOGPROB_SLOTS = 32


def main(settings: dict) -> None:
    out = claim_stdout()
    import llama_cpp
    from llama_cpp import Llama

    t0 = time.time()
    model = settings.pop("model")
    kv = {"type_k": settings.pop("cache_type_k"), "type_v": settings.pop("cache_type_v")}
    kv_ids = {k: getattr(llama_cpp, f"GGML_TYPE_{v.upper()}") for k, v in kv.items()}
    seed_setting = int(settings.get("seed", 0))
    llm = Llama(model_path=model, verbose=False, logits_all=True, **kv_ids, **settings)

    def decode(ctx, batch, items) -> None:
        """One llama_decode of `items`, each (token, position, sequence id, wants logits)."""
        for k, (tok, pos, seq, want) in enumerate(items):
            batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, pos, 1
            batch.seq_id[k][0], batch.logits[k] = seq, want
        batch.n_tokens = len(items)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
    def open_context(slots: int, tokens_per_sequence: int, *, ubatch_is_batch: bool = False, pad: int = 256):
        """A llama_context for one call, with the worker's settings (threads, n_batch, KV types, flash
        attention) and room for `slots` sequences of `tokens_per_sequence` tokens (rounded up to `pad`)
        each, KV not unified (each sequence gets n_ctx / n_seq_max); and a batch of n_batch tokens.
        The worker's own context holds one sequence. Returns (context, batch, memory, n_batch); the
        caller frees them with close_context. `ubatch_is_batch`: one graph per decode of n_batch
        tokens (scoring), rather than the worker's micro-batch.

        Without flash attention a decode's cost grows with the cells allocated, not only those
        used (135M Q4_K_M, 2 AVX2 cores, 64 + 32 tokens: 96.8 tok/s in 96 cells, ~93 in 256, 74 in
        2048), so `bench` sizes its context exactly, as llama-bench does."""
        per_seq = -(-tokens_per_sequence // pad) * pad
        cparams = type(llm.context_params).from_buffer_copy(llm.context_params)
        cparams.n_seq_max = slots
        cparams.n_ctx = per_seq * slots
        cparams.kv_unified = False
        cparams.n_batch = max(cparams.n_batch, slots)
        cparams.n_ubatch = cparams.n_batch if ubatch_is_batch else max(cparams.n_ubatch, slots)
        ctx = llama_cpp.llama_init_from_model(llm.model, cparams)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {slots} sequences of {per_seq} tokens")
        return ctx, llama_cpp.llama_batch_init(cparams.n_batch, 0, 1), llama_cpp.llama_get_memory(ctx), int(cparams.n_batch)

    def close_context(ctx, batch) -> None:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    load_seconds = time.time() - t0

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eos, bos, base_seed = llm.token_eos(), llm.token_bos(), seed_setting
    pieces: dict[int, bytes] = {}

    def piece(tok: int) -> bytes:
        """A token's bytes, as Llama.detokenize joins them (special tokens render as nothing)."""
        if tok not in pieces:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(vocab, tok, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(vocab, tok, buf, -n, 0, False)
            pieces[tok] = buf.raw[:n]
        return pieces[tok]

    def sampler(temperature: float, top_p: float, top_k: int, seed: int):
        """llama-cpp-python's chain for these settings (Llama._init_sampler, whose repeat penalty of
        1.0 does nothing and is left out): greedy at T=0; else top-k, typical 1.0, top-p, min-p 0,
        temperature, then a draw seeded with `seed` (a negative T: the draw alone)."""
        if temperature == 0:
            return llama_cpp.llama_sampler_init_greedy()
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if temperature > 0:
            for s in (llama_cpp.llama_sampler_init_top_k(max(0, top_k)), llama_cpp.llama_sampler_init_typical(1.0, 1),
                      llama_cpp.llama_sampler_init_top_p(top_p, 1), llama_cpp.llama_sampler_init_min_p(0.0, 1),
                      llama_cpp.llama_sampler_init_temp(temperature)):
                llama_cpp.llama_sampler_chain_add(chain, s)
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def generate(prompts: list[list[int]], temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 max_tokens: int = 64, seed: int | None = None, stop: list[str] | None = None, n: int = 1) -> list:
        """Generations with their token ids, through llama.cpp's C API the way llama-server runs its
        slots: up to GENERATE_SLOTS sequences decode together, one token each per llama_decode, a
        finished sequence's slot taking the next prompt (its prefill rides in the same decodes);
        logits only where a token is sampled, and the sampling in C (llama.cpp's sampler chain, as
        llama-cpp-python builds it). Per sequence the text grows token by token (StopText) and the
        generation ends at an end-of-generation token (not kept), at the first stop string (the
        text ends before it; its tokens are kept) or after max_tokens tokens.

        Sample i of a prompt is seeded with seed + i (vLLM's convention for n > 1; without a seed
        the worker's own); greedy samples are identical by definition, so one is generated and
        repeated, as the vLLM worker does. Greedy text and ids are the same as llama-cpp-python's
        one-prompt-at-a-time Llama.generate loop gave (quantkit.benchmarks.task_time checks it)."""
        draws = 1 if temperature == 0 else n
        base = base_seed if seed is None else seed
        jobs = [(p, i) for p in range(len(prompts)) for i in range(draws)]
        results: list[list] = [[None] * draws for _ in prompts]
        if not jobs:
            return []
        slots = min(len(jobs), GENERATE_SLOTS)
        ctx, batch, mem, n_batch = open_context(slots, max(len(p) for p in prompts) + max(1, max_tokens))
        greedy = llama_cpp.llama_sampler_init_greedy()
        pending = list(reversed(jobs))
        active: dict[int, dict] = {}  # slot -> its sequence
        feed: list[tuple[int, int, int, bool]] = []  # (token, position, slot, sample after it)

        def done(seq: dict, finish: str) -> None:
            p, i = seq["job"]
            results[p][i] = {"text": seq["text"].finish(), "token_ids": seq["ids"], "finish_reason": finish}
            if seq["sampler"] is not greedy:
                llama_cpp.llama_sampler_free(seq["sampler"])
            del active[seq["slot"]]

        def take(seq: dict, tok: int) -> None:
            """A sampled token: end the sequence, or feed the token back at its next position."""
            if tok == eos or llama_cpp.llama_vocab_is_eog(vocab, tok):
                return done(seq, "stop")
            ids = seq["ids"]
            ids.append(tok)
            b = piece(tok)
            if ids[0] == bos and not seq["text"].size and b[:1] == b" ":
                b = b[1:]  # as Llama.detokenize: a leading space goes when the first token is BOS
            if seq["text"].add(b):
                return done(seq, "stop")
            if len(ids) >= max_tokens:
                return done(seq, "length")
            feed.append((tok, seq["pos"], seq["slot"], True))
            seq["pos"] += 1

        try:
            while pending or active:
                for slot in range(slots):  # free slots take the next prompts; their prefill joins this step
                    if slot in active or not pending:
                        continue
                    p, i = pending.pop()
                    llama_cpp.llama_memory_seq_rm(mem, slot, -1, -1)
                    prompt = list(prompts[p])
                    smpl = greedy if temperature == 0 else sampler(temperature, top_p, top_k, base + i)
                    active[slot] = {"job": (p, i), "slot": slot, "ids": [], "pos": len(prompt), "sampler": smpl,
                                    "text": StopText(stop)}
                    feed += [(tok, pos, slot, pos == len(prompt) - 1) for pos, tok in enumerate(prompt)]
                # by sequence, then position: llama.cpp splits a batch over several KV streams into
                # micro-batches of consecutive sequence ids (llama_batch_allocr::split_equal), so
                # in slot order a step of one token per sequence is one graph, not one per run of slots
                todo, feed[:] = sorted(feed, key=lambda item: (item[2], item[1])), []
                for start in range(0, len(todo), n_batch):
                    chunk = todo[start:start + n_batch]
                    decode(ctx, batch, chunk)
                    for k, (_, _, slot, want) in enumerate(chunk):
                        if want:
                            seq = active[slot]
                            take(seq, llama_cpp.llama_sampler_sample(seq["sampler"], ctx, k))
        finally:
            for seq in active.values():
                if seq["sampler"] is not greedy:
                    llama_cpp.llama_sampler_free(seq["sampler"])
            llama_cpp.llama_sampler_free(greedy)
            close_context(ctx, batch)
        return [samples * n if draws == 1 else samples for samples in results]

    def logprobs(sequences: list[list[int]], top_k: int = 20) -> list:
        """For each sequence, per position i>=1: {"token": logprob of ids[i], "top": [[id, logprob], ...]}.

        llama.cpp returns full logits for every position, so the top-k here is a truncation we
        choose for uniformity with vLLM, not the engine's limit. The sequences go through llama.cpp's
        C API several at a time, each in its own sequence (its own KV stream, so its attention sees
        the same cells as alone): sorted by length and packed into decodes of up to n_batch
        tokens, a pack's shorter sequences padded at their end to its longest (causal attention:
        the padding changes no earlier position, and its logits are not computed), so that llama.cpp
        runs each pack as one graph instead of one per sequence."""
        import numpy as np

        if not sequences:
            return []
        packs = pack_by_length([len(s) for s in sequences], int(llm.context_params.n_batch), LOGPROB_SLOTS)
        ctx, batch, mem, n_batch = open_context(max(map(len, packs)), max(len(s) for s in sequences),
                                                ubatch_is_batch=True)
        n_vocab = llm.n_vocab()
        out_all: list = [None] * len(sequences)
        try:
            for pack in packs:
                llama_cpp.llama_memory_clear(mem, True)
                length = len(sequences[pack[0]])
                # logits where a next token is predicted: not at a sequence's last token, nor on padding
                items = [(sequences[i][min(pos, len(sequences[i]) - 1)], pos, slot, pos < len(sequences[i]) - 1)
                         for pos in range(length) for slot, i in enumerate(pack)]
                logits: dict[tuple[int, int], np.ndarray] = {}
                for start in range(0, len(items), n_batch):  # one decode unless a sequence is longer
                    chunk = items[start:start + n_batch]
                    decode(ctx, batch, chunk)
                    for k, (_, pos, slot, want) in enumerate(chunk):
                        if want:
                            row = llama_cpp.llama_get_logits_ith(ctx, k)
                            logits[slot, pos] = np.ctypeslib.as_array(row, shape=(n_vocab,)).astype(np.float64)
                for slot, i in enumerate(pack):
                    token_ids = sequences[i]
                    if len(token_ids) < 2:
                        out_all[i] = []
                        continue
                    lg = np.stack([logits[slot, pos] for pos in range(len(token_ids) - 1)])
                    lg -= lg.max(axis=1, keepdims=True)
                    logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
                    rows = []
                    for pos in range(1, len(token_ids)):
                        dist = logp[pos - 1]
                        top = np.argpartition(-dist, top_k)[:top_k]
                        top = top[np.argsort(-dist[top])]
                        rows.append({"token": float(dist[token_ids[pos]]),
                                     "top": [[int(t), float(dist[t])] for t in top]})
                    out_all[i] = rows
        finally:
            close_context(ctx, batch)
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

    def bench(prompts: list[list[int]], max_tokens: int, repeats: int = 3, pick: bool = True) -> dict:
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
        sequence's tokens (a check that the loop decodes what `generate` decodes). It also reports
        the seconds spent in the greedy pick (llama_sampler_sample builds the whole vocabulary's
        candidates: about 90 us a token for this 49k vocabulary on 2 cores, ~1% of a decode), which
        llama-bench never does (it feeds tokens without sampling).

        `pick=False` is llama-bench's loop: every decode still asks for the logits of its last token,
        but the next token is fed without picking (the prompt's tokens in turn; the cost of a decode
        does not depend on which token). The cross-check judges this run against llama-bench: the
        greedy pick costs more than its own time, since filling its 49k-entry candidate array
        (~590 KB) between decodes evicts part of the cache the next decode would reuse."""
        n_seq = len(prompts)
        cells = max(len(p) for p in prompts) + max_tokens
        ctx, batch, mem, n_batch = open_context(n_seq, cells, pad=1)
        smpl = llama_cpp.llama_sampler_init_greedy()

        sampling = [0.0]  # seconds in llama_sampler_sample during the current run

        def decode_greedy(items: list[tuple[int, int, int, bool]]) -> list[int]:
            """One decode of `items`; the greedy picks where logits were asked for, in order (without
            `pick`, the next token of each such sequence fed instead: its prompt's tokens in turn)."""
            decode(ctx, batch, items)
            if not pick:
                return [prompts[it[2]][(it[1] + 1) % len(prompts[it[2]])] for it in items if it[3]]
            t = time.perf_counter()
            picks = [llama_cpp.llama_sampler_sample(smpl, ctx, i) for i, it in enumerate(items) if it[3]]
            sampling[0] += time.perf_counter() - t
            return picks

        def run(seqs: list[list[int]], n_out: int) -> dict:
            llama_cpp.llama_memory_clear(mem, True)
            sampling[0] = 0.0
            t0 = time.perf_counter()
            flat = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(seqs) for pos, tok in enumerate(p)]
            last: list[int] = []
            for i in range(0, len(flat), n_batch):
                last += decode_greedy(flat[i:i + n_batch])
            t_first = time.perf_counter()
            prefill_sampling = sampling[0]
            first_seq = [last[0]]
            for step in range(1, n_out):
                last = decode_greedy([(tok, len(p) + step - 1, s, True) for s, (tok, p) in enumerate(zip(last, seqs))])
                first_seq.append(last[0])
            t_end = time.perf_counter()
            return {"seconds": t_end - t0, "output_tokens": len(seqs) * n_out, "prefill_seconds": t_first - t0,
                    "decode_tokens": len(seqs) * (n_out - 1), "decode_seconds": t_end - t_first,
                    "first_sequence_tokens": first_seq, "sample_seconds": sampling[0],
                    "decode_sample_seconds": sampling[0] - prefill_sampling}

        try:
            run([p[:8] for p in prompts], 4)  # warm-up
            runs = [run(prompts, max_tokens) for _ in range(repeats)]
        finally:
            llama_cpp.llama_sampler_free(smpl)
            close_context(ctx, batch)
        return {"runs": runs, "sequences": n_seq,
                "method": f"llama.cpp C API: {n_seq} sequence(s) in one batch, "
                          f"{'greedy in C' if pick else 'tokens fed without picking (as llama-bench)'}, "
                          f"{cells} KV cells per sequence (prompt + output, as llama-bench)"}

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


def pack_by_length(lengths: list[int], n_batch: int, slots: int) -> list[list[int]]:
    """Indices of sequences grouped for `logprobs`: longest first, each pack at most `slots`
    sequences whose count times the pack's longest length fits n_batch (every sequence is padded
    to the longest); a sequence longer than n_batch is a pack of its own."""
    packs: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if packs and len(packs[-1]) < slots and (len(packs[-1]) + 1) * lengths[packs[-1][0]] <= n_batch:
            packs[-1].append(i)
        else:
            packs.append([i])
    return packs


class StopText:
    """The text of one generation as its tokens' bytes arrive, cut at the first stop string.

    Decoded incrementally (UTF-8, invalid bytes replaced, a character split across tokens waits for
    its last byte), so the text is the same as decoding all the bytes at once; each new piece is
    searched for the stop strings together with the last len(longest stop) - 1 characters before
    it, so a stop string split across tokens is found on the token that completes it, and the
    earliest one wins, as HFLM's and the old loop's full-text search."""

    def __init__(self, stop: list[str] | None = None):
        self.stops = [s for s in (stop or []) if s]
        self._overlap = max((len(s) for s in self.stops), default=1) - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.size, self.stopped, self._final = "", 0, False, False

    def add(self, data: bytes) -> bool:
        """Append a token's bytes; True once a stop string has appeared (the text then ends before it)."""
        if self.stopped:
            return True
        self.size += len(data)
        start = max(0, len(self.text) - self._overlap)
        self.text += self._decoder.decode(data)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
        return self.stopped

    def finish(self) -> str:
        """The final text (a character left incomplete by the last token becomes U+FFFD)."""
        if not (self.stopped or self._final):
            self.text += self._decoder.decode(b"", final=True)
            self._final = True
        return self.text


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
