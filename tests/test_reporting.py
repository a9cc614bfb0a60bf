"""The shared verdict rule: "not reproduced" only with the budget the claim needs."""

import pytest

from gradience.reporting import Budget, judge, judged

CLOCK_OK = Budget("lr·wd·steps", 12.0, 10.0)
CLOCK_SHORT = Budget("lr·wd·steps", 0.9, 10.0)


def test_budget_met_and_text():
    assert CLOCK_OK.met and not CLOCK_SHORT.met
    assert Budget("seeds", 3, 3).met
    assert str(CLOCK_SHORT) == "lr·wd·steps 0.9 (needs ≥ 10)"


@pytest.mark.parametrize(("holds", "budgets", "absence", "verdict"), [
    (True, [CLOCK_OK], False, "reproduced"),
    (False, [CLOCK_OK], False, "not reproduced"),
    (False, [CLOCK_SHORT], False, "not comparable"),
    (True, [CLOCK_SHORT], False, "reproduced"),       # the predicted event happened early
    (True, [CLOCK_SHORT], True, "not comparable"),    # "never groks" seen in a run too short to grok
    (False, [CLOCK_SHORT], True, "not comparable"),
    (True, [CLOCK_OK], True, "reproduced"),
    (None, [CLOCK_OK], False, "inconclusive"),
    (False, [], False, "not reproduced"),
])
def test_judge(holds, budgets, absence, verdict):
    assert judge(holds, budgets, absence=absence)[0] == verdict


def test_reason_names_the_short_budget_and_the_met_ones():
    verdict, why = judge(False, [CLOCK_SHORT, Budget("seeds", 3, 3)])
    assert verdict == "not comparable"
    assert why == "short of budget: lr·wd·steps 0.9 (needs ≥ 10) (met: seeds 3 (needs ≥ 3))"


def test_judged_row_carries_claim_and_budget():
    row = judged("grokking.mul_wd0.1_groks", "0/3 grokked", False, "outcome differs", [CLOCK_OK])
    assert row["verdict"] == "not reproduced"
    assert row["why"] == "outcome differs; lr·wd·steps 12 (needs ≥ 10)"
    assert row["seed"].startswith("yes")
