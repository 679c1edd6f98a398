"""Recipes: declarative YAML describing one variant, validated by pydantic.

Errors name the file, the field path and what was expected. `--set a.b=value` overrides any
field before validation (the value is parsed as YAML, so `--set calibration.samples=64` is an int).
`method` is validated by the model registered for its `kind`: registering a builder
(quantkit.builders.registry.register_builder) registers its method model here; an unknown kind is
an error naming the file, the field and the known kinds.
Any input either validates or raises a ConfigError (tests/unit/test_recipe_fuzz.py checks this);
the YAML itself is read by `quantkit.yamlsafe` (no duplicate keys, no alias bombs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
)

from quantkit import yamlsafe
from quantkit.errors import ConfigError

GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q3_K_S",
              "Q3_K_L", "Q2_K", "IQ4_XS", "IQ3_M", "IQ2_M", "F16", "BF16")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Calibration(_Strict):
    dataset: str = Field(description="a name from evals/datasets.yaml (kind text) or a hub dataset id")
    samples: int = Field(128, ge=1, le=100_000)
    seq_len: int = Field(512, ge=16, le=32_768)
    seed: int = 0
    # "packed": passages joined and cut into exactly samples x seq_len tokens (the default, as
    # llm-compressor's examples and llama-imatrix's chunks do); "passages": one passage per sample,
    # cut at seq_len, as llm-compressor's own dataset loading does (LAMBADA: ~80 of 256 tokens
    # each), kept to measure what packing buys (quantkit/benchmarks/packing_effect.py)
    # left out of the dump when "packed", so that recipes written before this field keep their fingerprints
    packing: Literal["packed", "passages"] = Field("packed", exclude_if=lambda v: v == "packed")


class MethodBase(_Strict):
    """A recipe's `method`: each kind subclasses this with its own fields (extra fields are refused)."""

    kind: str

    def needs_calibration(self) -> bool:
        """Whether this method needs the recipe's `calibration` section."""
        return False


class _Calibrated(MethodBase):
    def needs_calibration(self) -> bool:
        return True


class AwqMethod(_Calibrated):
    kind: Literal["awq"]
    scheme: Literal["W4A16", "W4A16_ASYM"] = "W4A16_ASYM"
    group_size: int = Field(128, ge=16)
    backend: Literal["llmcompressor", "autoawq"] = "llmcompressor"
    ignore: list[str] = ["lm_head"]


class GptqMethod(_Calibrated):
    kind: Literal["gptq"]
    scheme: Literal["W4A16", "W4A16_ASYM", "W8A16"] = "W4A16"
    group_size: int = Field(128, ge=16)
    dampening_frac: float = Field(0.01, gt=0, lt=1)
    ignore: list[str] = ["lm_head"]


class Fp8Method(MethodBase):
    kind: Literal["fp8"]
    scheme: Literal["FP8_DYNAMIC", "FP8"] = "FP8_DYNAMIC"
    ignore: list[str] = ["lm_head"]


class Int8Method(_Calibrated):
    kind: Literal["int8"]
    scheme: Literal["W8A8"] = "W8A8"
    smoothquant_strength: float | None = Field(0.8, ge=0, le=1, description="null disables SmoothQuant")
    dampening_frac: float = Field(0.01, gt=0, lt=1)
    ignore: list[str] = ["lm_head"]


class GgufMethod(MethodBase):
    kind: Literal["gguf"]
    type: str = Field(description=f"llama-quantize type, one of {', '.join(GGUF_TYPES)}")
    imatrix: bool = False
    base_outtype: Literal["f16", "bf16", "f32"] = "f16"

    def needs_calibration(self) -> bool:
        return self.imatrix

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v.upper() not in GGUF_TYPES:
            raise ValueError(f"unknown GGUF type {v!r}; expected one of {', '.join(GGUF_TYPES)}")
        return v.upper()


BNB_ONLY = "vLLM's in-flight bitsandbytes loader quantizes to NF4 with double quantization only"


class BnbMethod(MethodBase):
    """bitsandbytes quantizes on load: nothing is built, the recipe records how vLLM loads it.

    vLLM's loader (model_loader/bitsandbytes_loader.py) calls `quantize_4bit(w, quant_type="nf4",
    compress_statistics=True)` whatever the recipe says, so the only honest values of `quant_type`
    and `double_quant` are those; anything else is refused rather than recorded and ignored.
    `compute_dtype` is the dtype vLLM computes in (its `dtype` setting)."""

    kind: Literal["bnb"]
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16"] = "bfloat16"

    @field_validator("quant_type")
    @classmethod
    def _nf4_only(cls, v: str) -> str:
        if v.lower() != "nf4":
            raise ValueError(f"{BNB_ONLY}; use quant_type: nf4")
        return "nf4"

    @field_validator("double_quant")
    @classmethod
    def _double_quant_only(cls, v: bool) -> bool:
        if not v:
            raise ValueError(f"{BNB_ONLY}; use double_quant: true (or leave it out)")
        return v


# kind -> method model; filled by quantkit.builders.registry (register_builder), read through method_model
_METHODS: dict[str, type[MethodBase]] = {}


def register_method(kind: str, model: type[MethodBase], *, replace: bool = False) -> None:
    """Validate recipes whose `method.kind` is `kind` with `model` (called by register_builder)."""
    if not (isinstance(model, type) and issubclass(model, MethodBase)):
        raise TypeError(f"method model for {kind!r} must subclass quantkit.recipes.MethodBase")
    if not replace and _METHODS.get(kind, model) is not model:
        raise ValueError(f"method kind {kind!r} is registered already ({_METHODS[kind].__name__})")
    _METHODS[kind] = model


def unregister_method(kind: str) -> None:
    _METHODS.pop(kind, None)


def _ensure_builtin() -> None:
    import quantkit.builders.registry  # noqa: F401  (registers the built-in builders and their methods)


def method_kinds() -> list[str]:
    _ensure_builtin()
    return sorted(_METHODS)


def method_model(kind: str) -> type[MethodBase] | None:
    _ensure_builtin()
    return _METHODS.get(kind)


def _unknown_kind(kind: Any) -> str:
    return f"unknown method kind {kind!r}; known kinds: {', '.join(method_kinds())}"


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = "default"
    description: str = ""
    method: SerializeAsAny[MethodBase]
    calibration: Calibration | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _method_by_kind(cls, v: Any) -> Any:
        # parse_recipe validates `method` itself (errors with field paths); this serves direct use
        if isinstance(v, dict):
            kind = v.get("kind")
            model = method_model(kind) if isinstance(kind, str) else None
            if model is None:
                raise ValueError(_unknown_kind(v.get("kind")))
            return model.model_validate(v)
        return v

    def check_calibration(self) -> None:
        if self.method.needs_calibration() and self.calibration is None:
            raise ValueError(f"method {self.method.kind!r} needs a `calibration` section (dataset, samples, seq_len)")
        if self.calibration is not None and self.calibration.packing == "passages" and self.method.kind == "gguf":
            raise ValueError("calibration.packing 'passages' is for llm-compressor methods: llama-imatrix cuts its "
                             "text into seq_len chunks itself, so a GGUF imatrix is always packed")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value", hint="e.g. --set calibration.samples=64")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r} has an empty key")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = child
        node[parts[-1]] = yamlsafe.loads(raw, f"--set {key.strip()}")
    return data


def _describe(err: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> str:
    loc = [*prefix, *(str(p) for p in err["loc"])]
    field = ".".join(loc) or "(top level)"
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    got = f" (got {shown})" if err.get("type") not in ("missing",) and not isinstance(err.get("input"), dict) else ""
    return f"field '{field}': {err['msg']}{got}"


def _validate_method(raw: Any, problems: list[str]) -> tuple[MethodBase | None, Any]:
    """The method model for `raw` (by its kind), or None with what is wrong added to `problems`."""
    if not isinstance(raw, dict):
        problems.append(f"field 'method': expected a mapping with a `kind`, got {type(raw).__name__}")
        return None, raw
    if "kind" not in raw:
        problems.append(f"field 'method.kind': Field required (known kinds: {', '.join(method_kinds())})")
        return None, raw
    kind = raw["kind"]
    model = method_model(kind) if isinstance(kind, str) else None
    if model is None:
        problems.append(f"field 'method.kind': {_unknown_kind(kind)}")
        return None, raw
    try:
        return model.model_validate(raw), raw
    except ValidationError as e:
        problems.extend(_describe(err, ("method",)) for err in e.errors())
        return None, raw


def parse_recipe(data: Any, origin: str) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a recipe must be a YAML mapping, got {type(data).__name__}")
    problems: list[str] = []
    method, rest = _validate_method(data.get("method"), problems) if "method" in data else (None, data)
    if method is not None:
        rest = {**data, "method": method}
    elif "method" in data:  # its problems are listed; validate the other fields with a stand-in
        rest = {**data, "method": MethodBase.model_construct(kind="?")}
    try:
        recipe = Recipe.model_validate(rest)
    except ValidationError as e:
        problems += [_describe(err) for err in e.errors()]
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(f"{origin}: invalid recipe\n  {lines}",
                          hint="see recipes/README.md for the fields of each method") from None
    try:
        recipe.check_calibration()
    except ValueError as e:
        raise ConfigError(f"{origin}: invalid recipe\n  field 'calibration': {e}") from None
    return recipe


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as e:  # a name too long, a folder it may not look into
        raise ConfigError(f"recipe file {path}: cannot look it up ({e.strerror or e})") from None
    if not exists:
        raise ConfigError(f"recipe file {path} does not exist", hint="see `ls recipes/`")
    data = yamlsafe.load_file(path)
    if overrides and isinstance(data, dict):
        data = apply_overrides(data, overrides)
    return parse_recipe(data, str(path))
