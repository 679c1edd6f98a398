"""Download a hub model's files into the Hugging Face cache. Runs in `compressor` (huggingface_hub).

Usage: python -m quantkit.workers.snapshot REPO_ID
Prints {"path": local snapshot folder, "revision": commit} as its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(repo_id: str) -> None:
    from huggingface_hub import snapshot_download

    # weights, config, tokenizer and chat template; not other formats' duplicates (*.pth, *.gguf...)
    path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja",
                                                      "*.tiktoken", "*.py"])
    print(json.dumps({"path": path, "revision": Path(path).name}))


if __name__ == "__main__":
    main(sys.argv[1])
