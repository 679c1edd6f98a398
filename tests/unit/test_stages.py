import io

import pytest
from rich.console import Console

from quantkit.evaluation.stages import StageClock


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_stages_keep_order_labels_failures_and_totals():
    clk = Clock()
    sc = StageClock(clock=clk)
    with sc.stage("start", model="reference", engine="vllm", what="server") as row:
        clk.t += 40.0
        row["load_seconds"] = 31.5
    with sc.stage("group", model="reference", engine="vllm", what="serving"):
        clk.t += 12.0
    with pytest.raises(RuntimeError), sc.stage("group", model="q4", engine="llamacpp", what="tasks"):
        clk.t += 3.0
        raise RuntimeError("engine died")
    assert [r["seconds"] for r in sc.rows] == [40.0, 12.0, 3.0]
    assert sc.rows[0]["load_seconds"] == 31.5 and sc.rows[2]["status"] == "failed"
    assert sc.total(stage="start") == 40.0 and sc.total(model="reference") == 52.0
    out = io.StringIO()
    Console(file=out, width=160).print(sc.table())
    text = out.getvalue()
    assert "3.0 (failed)" in text and "55.0" in text and "serving" in text
