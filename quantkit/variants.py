"""Variant folders under models/variants/<name>/ and their manifests.

A variant is valid only if its folder holds `quantkit-variant.json` with status "complete". The
folder is written through quantkit.atomic, so a killed build leaves at most a hidden partial
folder, which listings ignore.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantkit import paths
from quantkit.errors import ConfigError

MANIFEST = "quantkit-variant.json"


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    manifest: dict

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    @property
    def method(self) -> str:
        m = self.manifest.get("recipe", {}).get("method", {})
        return m.get("type") or m.get("scheme") or m.get("kind", "?")

    @property
    def format(self) -> str:
        return self.manifest.get("format", "?")


def variant_dir(name: str) -> Path:
    return paths.variants_dir() / name


def read(path: Path) -> Variant:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {}
    return Variant(path.name, path, manifest)


def all_variants() -> list[Variant]:
    """Every non-hidden folder under models/variants, complete or not (listing shows which)."""
    root = paths.variants_dir()
    if not root.exists():
        return []
    return [read(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def get(name_or_path: str) -> Variant:
    p = Path(name_or_path)
    path = p if (p / MANIFEST).exists() else variant_dir(name_or_path)
    v = read(path)
    if not v.complete:
        known = ", ".join(x.name for x in all_variants() if x.complete) or "none yet"
        raise ConfigError(f"no complete variant {name_or_path!r}",
                          hint=f"build it with `quantkit build recipes/<recipe>.yaml`; complete variants: {known}")
    return v


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
