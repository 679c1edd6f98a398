"""Render prompts once with the reference tokenizer (and its chat template). Runs in `compressor`.

Usage: python -m quantkit.workers.render TOKENIZER_DIR IN_JSON OUT_JSON
IN_JSON holds a list of items, each {"text": str[, "add_special_tokens": bool]} (plain prompt) or
{"messages": [...]} (chat: rendered with the template and a generation prompt). OUT_JSON gets, per
item, {"text": rendered text, "token_ids": [...]}. Engines then all receive these same token ids.
"""

from __future__ import annotations

import json
import sys


def render(tokenizer_dir: str, items: list[dict]) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = []
    for item in items:
        if "messages" in item:
            text = tok.apply_chat_template(item["messages"], tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]  # the template already has them
        else:
            text = item["text"]
            ids = tok(text, add_special_tokens=item.get("add_special_tokens", True))["input_ids"]
        out.append({"text": text, "token_ids": list(ids)})
    return out


if __name__ == "__main__":
    tokenizer_dir, in_file, out_file = sys.argv[1:4]
    with open(in_file, encoding="utf-8") as f:
        items = json.load(f)
    with open(out_file, "w", encoding="utf-8") as f:
        json.dump(render(tokenizer_dir, items), f)
    print(json.dumps({"rendered": len(items)}))
