"""Group-size checks for grouped weight quantization (stdlib only: also used inside workers).

Grouped schemes split each Linear's input columns into groups; llm-compressor refuses a group
size that does not divide the column count. Checking first turns a late crash into a clear error.
"""

from __future__ import annotations

from math import gcd


def bad_layers(in_features: dict[str, int], group_size: int) -> dict[str, int]:
    """Layers (name -> input width) whose width is not a multiple of `group_size`."""
    return {name: width for name, width in in_features.items() if width % group_size}


def workable_group_sizes(in_features: dict[str, int], candidates=(16, 32, 64, 128, 256)) -> list[int]:
    common = 0
    for width in in_features.values():
        common = gcd(common, width)
    return [g for g in candidates if common and common % g == 0]


def widths_from_config(config: dict) -> dict[str, int]:
    """Input widths of a decoder's Linear layers, from a Hugging Face config.json."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    widths = {"q_proj/k_proj/v_proj": hidden, "o_proj": heads * head_dim}
    if "intermediate_size" in config:
        widths["gate_proj/up_proj"] = hidden
        widths["down_proj"] = config["intermediate_size"]
    return widths


def check(in_features: dict[str, int], group_size: int) -> str | None:
    """None if `group_size` works, else a message naming the layers and the sizes that would."""
    bad = bad_layers(in_features, group_size)
    if not bad:
        return None
    names = ", ".join(f"{n} ({w} columns)" for n, w in sorted(bad.items()))
    good = workable_group_sizes(in_features)
    return (f"group_size {group_size} does not divide the input width of: {names}. "
            f"Group sizes that divide every layer: {', '.join(map(str, good)) or 'none of 16..256'}")
