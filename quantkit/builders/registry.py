"""Builders by method kind. Registering a builder registers its recipe method model too.

    from quantkit.builders.registry import register_builder
    register_builder("hqq", build="my_package.hqq:build", method=HqqMethod, output_format="hqq")

`build` is a function (recipe, source, out_dir, progress, task) -> manifest fields, or its
"module:function" (imported when a build of that kind runs); `method` subclasses
quantkit.recipes.MethodBase with `kind: Literal["hqq"]`; `output_format` is the variant format the
build writes (a string, or a function of the method), which decides the engine that serves it
(quantkit.engines.registry.for_format). An unknown kind is a ConfigError naming the known kinds, a
kind taken by another builder a ValueError. The mechanics are quantkit.registry's (the registered
item is the BuilderSpec itself; its "module:function" is imported by `function()`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantkit import recipes
from quantkit.errors import ConfigError
from quantkit.recipes import (
    AwqMethod,
    BnbMethod,
    Fp8Method,
    GgufMethod,
    GptqMethod,
    Int8Method,
    MethodBase,
    Recipe,
)
from quantkit.registry import Registry, import_attr

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from quantkit.engines.base import Engine
    from quantkit.sources import Source

Builder = Callable[[Recipe, "Source", Path, "Progress", "TaskID"], dict]


@dataclass(frozen=True)
class BuilderSpec:
    kind: str
    build: str | Builder  # "module:function" or the function
    method: type[MethodBase]
    output_format: str | Callable[[Any], str]

    def function(self) -> Builder:
        return self.build if callable(self.build) else import_attr(self.build)

    def format_of(self, method: MethodBase) -> str:
        return self.output_format(method) if callable(self.output_format) else self.output_format

    def engine(self, method: MethodBase) -> Engine:
        """The engine that serves what this builder makes from `method`."""
        from quantkit.engines import registry

        return registry.for_format(self.format_of(method))


_BUILDERS: Registry[BuilderSpec] = Registry("builder for method kind", error=ConfigError)


def register_builder(kind: str, *, build: str | Builder, method: type[MethodBase],
                     output_format: str | Callable[[Any], str], replace: bool = False) -> BuilderSpec:
    spec = BuilderSpec(kind, build, method, output_format)
    # the method first: it refuses a kind taken by another model, and changes nothing for the same model
    recipes.register_method(kind, method, replace=replace)
    _BUILDERS.register(kind, spec, replace=replace)
    return spec


def unregister_builder(kind: str) -> None:
    _BUILDERS.unregister(kind)
    recipes.unregister_method(kind)


def kinds() -> list[str]:
    return sorted(_BUILDERS.names())


def get(kind: str, origin: str = "recipe") -> BuilderSpec:
    if kind not in _BUILDERS:
        raise ConfigError(f"{origin}: field 'method.kind': no builder for method kind {kind!r}",
                          hint=f"known kinds: {', '.join(kinds())}")
    return _BUILDERS.get(kind)


def for_method(method: MethodBase, origin: str = "recipe") -> BuilderSpec:
    return get(method.kind, origin)


def _llmcompressor_format(method: Any) -> str:
    # AWQ through AutoAWQ writes an AutoAWQ (GEMM) checkpoint; llm-compressor writes compressed-tensors
    return "awq" if method.kind == "awq" and getattr(method, "backend", None) == "autoawq" else "compressed-tensors"


for _kind, _model in (("awq", AwqMethod), ("gptq", GptqMethod), ("fp8", Fp8Method), ("int8", Int8Method)):
    register_builder(_kind, build="quantkit.builders.llmcompressor:build", method=_model,
                     output_format=_llmcompressor_format)
register_builder("gguf", build="quantkit.builders.gguf:build", method=GgufMethod, output_format="gguf")
register_builder("bnb", build="quantkit.builders.bnb:build", method=BnbMethod, output_format="bnb-on-load")
