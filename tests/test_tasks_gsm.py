"""GSM8K-schema problems: final-number extraction, exact match, reasoning-gym's gsm_symbolic."""

import pytest

from gradience.tasks import gsm


def test_final_number_and_exact_match():
    assert gsm.final_number("so 3+4=7\n#### 7") == "7"
    assert gsm.final_number("#### 1,234") == "1234"
    assert gsm.final_number("#### -12.50") == "-12.5" and gsm.final_number("#### 40.0") == "40"
    assert gsm.final_number("#### 3 then #### 5") == "5" and gsm.final_number("no answer") is None
    assert gsm.exact_match(" 2+3=5\n#### 5 apples", "2+3=5\n#### 5")
    assert not gsm.exact_match("The answer is 5", "#### 5")  # no '####': wrong, as the seed scored
    with pytest.raises(ValueError, match="no '#### N'"):
        gsm.exact_match("#### 5", "five")


def test_gsm_symbolic_files(tmp_path):
    train, test = gsm.build_gsm_symbolic(tmp_path, n_train=20, n_test=10, seed=3)
    a = gsm.read_jsonl(train)
    assert len(a) == 20 and len(gsm.read_jsonl(test)) == 10
    assert all(r["answer"].rstrip().splitlines()[-1].startswith("#### ") for r in a)
    assert train.read_bytes() == gsm.build_gsm_symbolic(tmp_path / "again", 20, 10, 3)[0].read_bytes()
    assert {r["question"] for r in a}.isdisjoint({r["question"] for r in gsm.read_jsonl(test)})
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "5"}\n')
    with pytest.raises(ValueError, match="ending in '#### N'"):
        gsm.read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="missing data"):
        gsm.read_jsonl(tmp_path / "absent.jsonl")
