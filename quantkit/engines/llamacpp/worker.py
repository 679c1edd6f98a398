"""llama.cpp engine worker: runs inside the `llamacpp` env, speaks quantkit.workers.protocol.

Usage: python -m quantkit.engines.llamacpp.worker '<json engine settings>'
"""

from __future__ import annotations

import json
import os
import sys
import time

from quantkit.workers.protocol import serve


def main(settings: dict) -> None:
    import llama_cpp
    from llama_cpp import Llama

    t0 = time.time()
    model = settings.pop("model")
    llm = Llama(model_path=model, verbose=False, **settings)
    load_seconds = time.time() - t0

    def generate(prompts: list[list[int]], temperature: float = 0.0, top_p: float = 1.0, top_k: int = -1,
                 max_tokens: int = 64, seed: int | None = None, stop: list[str] | None = None, n: int = 1) -> list:
        results = []
        for prompt in prompts:
            samples = []
            for i in range(n):
                llm.reset()
                if seed is not None:
                    llm.set_seed(seed + i)
                out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                            top_k=top_k if top_k > 0 else 0, stop=stop or [])
                choice = out["choices"][0]
                samples.append({"text": choice["text"], "finish_reason": choice["finish_reason"]})
            results.append(samples)
        return results

    def info() -> dict:
        return {"engine": "llama.cpp", "version": llama_cpp.__version__, "model": model,
                "load_seconds": load_seconds, "pid": os.getpid()}

    serve({"generate": generate, "info": info})


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
