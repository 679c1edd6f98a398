"""Where quantkit keeps things. Every location can be moved with an environment variable.

- QUANTKIT_HOME (default ~/.cache/quantkit): engine environments, data packages, llama.cpp
  build, caches. Shared by every checkout on the machine, so environments are built once.
- QUANTKIT_MODELS (default <repo>/models): the reference checkpoint and built variants.
- QUANTKIT_RESULTS (default <repo>/results/quantkit.sqlite): the results database.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def home() -> Path:
    return Path(os.environ.get("QUANTKIT_HOME", Path.home() / ".cache" / "quantkit")).expanduser()


def envs_dir() -> Path:
    return home() / "envs"


def data_packages_dir() -> Path:
    """pip --target folder holding the data-only packages (model file, evaluation sets)."""
    return home() / "packages"


def tools_dir() -> Path:
    return home() / "tools"


def cache_dir() -> Path:
    return home() / "cache"


def models_dir() -> Path:
    return Path(os.environ.get("QUANTKIT_MODELS", REPO_ROOT / "models")).expanduser()


def reference_dir() -> Path:
    return models_dir() / "reference"


def variants_dir() -> Path:
    return models_dir() / "variants"


def evals_dir() -> Path:
    return REPO_ROOT / "evals"


def recipes_dir() -> Path:
    return REPO_ROOT / "recipes"


def results_db() -> Path:
    return Path(os.environ.get("QUANTKIT_RESULTS", REPO_ROOT / "results" / "quantkit.sqlite")).expanduser()
