import pytest

from quantkit.evaluation import sweeps


def test_extraction_and_normalisation_follow_the_task_config():
    assert sweeps.extract("so 3 + 4 = 7.\n#### 1,234") == "1,234"
    assert sweeps.normalise("1,234") == "1234" and sweeps.normalise("$18.") == "18"
    assert sweeps.gold("Janet sells ... = $18 \n#### 18") == "18"
    assert sweeps.extract("no digits here") is None


def test_score_accuracy_stderr_and_diversity_by_hand():
    golds = ["18", "3"]
    samples = [["#### 18", "#### 18"],          # all right, identical
               ["the answer is 3", "maybe 4"]]  # half right, different
    r = sweeps.score(golds, samples)
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["accuracy_stderr"] == pytest.approx(((0.25 ** 2 * 2) / 1 / 2) ** 0.5)
    assert r["diversity"] == 0.5 and r["problems"] == 2 and r["samples"] == 2
