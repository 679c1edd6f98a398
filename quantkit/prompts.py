"""Prompts are rendered once, in one place, with the reference tokenizer; results are cached.

Every engine then receives the same token ids, so no engine's own chat handling (which differs,
see ENGINE_NOTES) can tilt a comparison.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quantkit import paths


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    token_ids: tuple[int, ...]


def chat(user: str, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"messages": messages}


def plain(text: str, add_special_tokens: bool = True) -> dict:
    """A plain continuation prompt; `add_special_tokens=False` for pieces that are split and joined
    later (lm-eval's context/continuation encoding), which must not gain BOS/EOS tokens."""
    return {"text": text} if add_special_tokens else {"text": text, "add_special_tokens": False}


def _tokenizer_fingerprint(tokenizer_dir: Path) -> str:
    files = [f for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
             if (tokenizer_dir / f).exists()]
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + (tokenizer_dir / f).read_bytes())
    return h.hexdigest()[:16]


def render(tokenizer_dir: Path, items: list[dict]) -> list[RenderedPrompt]:
    """Render `items` (see `chat` / `plain`) with the tokenizer in `tokenizer_dir`, cached on disk."""
    from quantkit.envs.run import run_worker

    key = hashlib.sha256((_tokenizer_fingerprint(tokenizer_dir) + json.dumps(items, sort_keys=True)).encode())
    cache = paths.cache_dir() / "prompts" / f"{key.hexdigest()[:24]}.json"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
            src.write_text(json.dumps(items))
            run_worker("compressor", "quantkit.workers.render", [tokenizer_dir, src, dst],
                       paths.cache_dir() / "prompts" / "render.log")
            dst.replace(cache)
    data = json.loads(cache.read_text())
    return [RenderedPrompt(d["text"], tuple(d["token_ids"])) for d in data]
