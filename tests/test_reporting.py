"""The shared verdict rule: "not reproduced" only with the budget the claim needs."""

import pandas as pd
import pytest

from gradience.reporting import (
    Budget,
    Power,
    claim_kind,
    claims,
    judge,
    judged,
    judged_per_task,
    verdict_counts,
)

CLOCK_OK = Budget("lr·wd·steps", 12.0, 10.0)
CLOCK_SHORT = Budget("lr·wd·steps", 0.9, 10.0)


def test_budget_met_and_text():
    assert CLOCK_OK.met and not CLOCK_SHORT.met
    assert Budget("seeds", 3, 3).met
    assert str(CLOCK_SHORT) == "lr·wd·steps 0.9 (needs ≥ 10)"


ENOUGH = Power("accuracy difference (points)", 3.0, 5.0)  # could have seen the claimed 5 points
TOO_LITTLE = Power("accuracy difference (points)", 8.0, 5.0)  # could not


@pytest.mark.parametrize(("holds", "budgets", "kind", "power", "verdict"), [
    # an event ("it groks"): shown whatever the budget; a negative needs every budget
    (True, [CLOCK_OK], "event", None, "reproduced"),
    (True, [CLOCK_SHORT], "event", None, "reproduced"),         # the predicted event happened early
    (False, [CLOCK_OK], "event", None, "not reproduced"),
    (False, [CLOCK_SHORT], "event", None, "not comparable"),    # too short for it to happen
    (False, [], "event", None, "not reproduced"),
    # a comparison ("A beats B"): a short run fakes either answer; a negative needs power
    (True, [CLOCK_OK], "comparison", None, "reproduced"),
    (True, [CLOCK_SHORT], "comparison", None, "not comparable"),
    (False, [CLOCK_SHORT], "comparison", ENOUGH, "not comparable"),
    (False, [CLOCK_OK], "comparison", ENOUGH, "not reproduced"),
    (False, [CLOCK_OK], "comparison", TOO_LITTLE, "inconclusive"),
    (False, [CLOCK_OK], "comparison", None, "inconclusive"),     # no stated power: no negative
    # an absence ("does not grok", "no difference"): every budget for either answer, as a comparison
    (False, [CLOCK_SHORT], "absence", None, "not comparable"),  # one short run can show seed noise
    (False, [CLOCK_OK], "absence", None, "not reproduced"),     # what it rules out, shown
    (False, [CLOCK_OK], "absence", TOO_LITTLE, "not reproduced"),  # a difference seen needs no power
    (True, [CLOCK_SHORT], "absence", None, "not comparable"),   # "never groks" in a run too short to grok
    (True, [CLOCK_OK], "absence", None, "reproduced"),
    (True, [CLOCK_OK], "absence", ENOUGH, "reproduced"),
    (True, [CLOCK_OK], "absence", TOO_LITTLE, "inconclusive"),  # "no difference" the runs could not have seen
    # nothing to judge
    (None, [CLOCK_OK], "event", None, "inconclusive"),
    (None, [CLOCK_OK], "comparison", ENOUGH, "inconclusive"),
])
def test_judge(holds, budgets, kind, power, verdict):
    assert judge(holds, budgets, kind, power)[0] == verdict


def test_reason_names_the_short_budget_and_the_met_ones():
    verdict, why = judge(False, [CLOCK_SHORT, Budget("seeds", 3, 3)], "event")
    assert verdict == "not comparable"
    assert why == "short of budget: lr·wd·steps 0.9 (needs ≥ 10) (met: seeds 3 (needs ≥ 3))"


def test_an_inconclusive_negative_names_the_detectable_and_the_claimed_effect():
    verdict, why = judge(False, [Budget("seeds", 4, 4)], "comparison", TOO_LITTLE)
    assert verdict == "inconclusive"
    assert why == ("too little power for a negative: smallest detectable accuracy difference (points) 8 vs "
                   "claimed 5; seeds 4 (needs ≥ 4)")
    assert "is not stated" in judge(False, [], "comparison")[1]
    assert judge(False, [], "comparison", Power("d", float("nan"), 1.0))[0] == "inconclusive"  # unknown power
    assert Power("d", 5.0, -5.0).sufficient  # a claimed effect's sign does not matter


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        judge(True, [], "anecdote")


def test_every_registered_claim_has_a_kind():
    assert all(claim_kind(cid) in ("event", "comparison", "absence") for cid in claims())
    assert claim_kind("grokking.mul_wd0.1_groks") == "event"
    assert claim_kind("grokking.add_wd0.1_memorises") == "absence"


def test_judged_row_carries_claim_and_budget():
    row = judged("grokking.mul_wd0.1_groks", "0/3 grokked", False, "outcome differs", [CLOCK_OK])
    assert row["verdict"] == "not reproduced"
    assert row["why"] == "outcome differs; lr·wd·steps 12 (needs ≥ 10)"
    assert row["seed"].startswith("yes")


SEEDS_OK, SEEDS_SHORT = Budget("seeds", 3, 3), Budget("seeds", 1, 3)
PER_TASK = {"A": [CLOCK_OK, SEEDS_OK], "B": [CLOCK_SHORT, SEEDS_SHORT]}  # one budget set per task


@pytest.mark.parametrize(("claim_id", "results", "verdict"), [
    # an event (edge_dominance): shown in a short task is still shown
    ("spectral_edge.edge_dominance", {"A": (True, "a"), "B": (True, "b")}, "reproduced"),
    ("spectral_edge.edge_dominance", {"A": (True, "a"), "B": (False, "b")}, "not comparable"),  # B too short
    ("spectral_edge.edge_dominance", {"A": (False, "a"), "B": (True, "b")}, "not reproduced"),  # A: every budget met
    # a comparison (ablation_critical): the short task cannot decide either way
    ("spectral_edge.ablation_critical", {"A": (True, "a"), "B": (True, "b")}, "not comparable"),
    ("spectral_edge.ablation_critical", {"A": (True, "a")}, "reproduced"),
    ("spectral_edge.ablation_critical", {"A": (False, "a")}, "inconclusive"),  # a negative with no stated power
    ("spectral_edge.ablation_critical", {"A": (None, "a")}, "inconclusive"),
])
def test_judged_per_task_combines_each_tasks_verdict(claim_id, results, verdict):
    row = judged_per_task(claim_id, results, PER_TASK, "why")
    assert row["verdict"] == verdict
    assert all(f"{t}: " in row["measured"] for t in results)


def test_judged_per_task_uses_the_tasks_one_budget_set_and_power():
    row = judged_per_task("spectral_edge.ablation_critical", {"A": (False, "ratio 3")}, PER_TASK, "holds when > 10",
                          power={"A": ENOUGH})
    assert row["verdict"] == "not reproduced"  # every budget of A met, and power to see the claimed effect
    assert row["measured"] == "A: ratio 3 (not reproduced)"
    assert row["why"] == ("holds when > 10; A: lr·wd·steps 12 (needs ≥ 10); seeds 3 (needs ≥ 3); smallest detectable "
                          "accuracy difference (points) 3 vs claimed 5")
    with pytest.raises(KeyError, match="no budget set for task"):
        judged_per_task("spectral_edge.ablation_critical", {"C": (True, "c")}, PER_TASK, "why")


def test_verdict_counts_name_all_four_verdicts_zeros_included():
    table = pd.DataFrame({"verdict": ["reproduced", "reproduced", "inconclusive"]})
    assert verdict_counts(table) == {"reproduced": 2, "not reproduced": 0, "not comparable": 0, "inconclusive": 1}
