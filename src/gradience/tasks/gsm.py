"""GSM8K-schema word problems: records ``{"question", "answer"}``, the answer ending in ``#### N``.

Scoring as the seed did: exact match of the final number after ``####`` (commas and a trailing
``.0`` removed). Sources:

* default profile: PyPI ``reasoning-gym``'s ``gsm_symbolic`` (85 templates derived from GSM8K,
  instantiated from a seed; its chain-of-thought answers end in ``#### N``) — not the real GSM8K
  test set; :func:`build_gsm_symbolic` writes ``train.jsonl`` / ``test.jsonl``;
* default profile of ``lora_gsm8k``: a shorter arithmetic task of ``reasoning-gym`` in the same
  schema (:func:`build_arithmetic`; the answer is the final number only, ``#### N``): SmolLM2-135M
  never writes ``####`` zero-shot and cannot learn ``gsm_symbolic`` in a CPU budget;
* paper profile: GSM8K through ``datasets`` at a pinned revision (:func:`hub_gsm8k`, needs the hub);
* tests: any local JSONL file in the same schema (:func:`read_jsonl`).
"""

from __future__ import annotations

import re
from pathlib import Path

from gradience.tasks.jsonl import read_records, write_records

GSM8K_DATASET = ("openai/gsm8k", "main")
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def final_number(text: str) -> str | None:
    """The number after the last ``####`` in ``text``, normalised (no commas, no trailing ``.0``)."""
    found = _FINAL.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value or "0"


def exact_match(prediction: str, answer: str) -> bool:
    """GSM8K exact match: the final numbers after ``####`` agree (a prediction without one is wrong)."""
    gold, pred = final_number(answer), final_number(prediction)
    if gold is None:
        raise ValueError(f"the reference answer has no '#### N': {answer!r}")
    return pred == gold


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a GSM8K-schema JSONL file; a clear error when the file or a field is missing."""
    return read_records(path, lambda r: {"question", "answer"} <= r.keys() and final_number(r["answer"]) is not None,
                        "a GSM8K record needs 'question' and an 'answer' ending in '#### N'",
                        "gradience.tasks.gsm.build_gsm_symbolic")


def gsm_symbolic(n: int, seed: int) -> list[dict]:
    """``n`` problems of reasoning-gym's ``gsm_symbolic`` in GSM8K schema (answer = its chain of thought)."""
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError("gsm_symbolic needs the PyPI package reasoning-gym (pip install reasoning-gym)") from e
    ds = reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=n)
    out = []
    for item in ds:
        cot = item["metadata"]["answer_cot"].strip()
        if final_number(cot) != final_number(f"#### {item['answer']}"):
            cot = f"{cot}\n#### {item['answer']}"
        out.append({"question": item["question"], "answer": cot})
    return out


def build_gsm_symbolic(folder: str | Path, n_train: int = 2000, n_test: int = 500, seed: int = 0) -> list[Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` under ``folder`` (seeds ``seed`` and ``seed + 1``; test
    problems whose question also occurs in train are dropped, so the splits are disjoint); deterministic bytes."""
    folder = Path(folder)
    train = gsm_symbolic(n_train, seed)
    seen = {r["question"] for r in train}
    test = [r for r in gsm_symbolic(2 * n_test, seed + 1) if r["question"] not in seen][:n_test]
    if len(test) < n_test:
        raise ValueError(f"only {len(test)} of {n_test} test problems are not in train; use a smaller n_test")
    return [write_records(train, folder / "train.jsonl"), write_records(test, folder / "test.jsonl")]


def hub_gsm8k(split: str, revision: str) -> list[dict]:
    """GSM8K through ``datasets`` at ``revision`` (paper profile; needs the Hugging Face hub)."""
    from datasets import load_dataset

    name, config = GSM8K_DATASET
    ds = load_dataset(name, config, split=split, revision=revision)
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]


#: The default profile's arithmetic task: reasoning-gym dataset and its configuration (a free choice,
#: measured: short problems that a few dozen LoRA steps on SmolLM2-135M visibly learn).
ARITHMETIC = ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2})


TEST_SEED_OFFSET = 1_000_003


def reasoning_gym_records(dataset: str, n: int, seed: int, **config) -> list[dict]:
    """``n`` problems of a reasoning-gym ``dataset`` in GSM8K schema, the answer being ``#### N`` only."""
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError(f"{dataset} needs the PyPI package reasoning-gym (pip install reasoning-gym)") from e
    ds = reasoning_gym.create_dataset(dataset, seed=seed, size=n, **config)
    return [{"question": " ".join(item["question"].split()), "answer": f"#### {item['answer']}"} for item in ds]


def build_arithmetic(folder: str | Path, n_train: int = 2000, n_test: int = 500, seed: int = 0,
                     task: tuple[str, dict] = ARITHMETIC) -> list[Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` of the arithmetic task (seeds ``seed`` and ``seed +``
    :data:`TEST_SEED_OFFSET`: reasoning-gym seeds item i with ``seed + i``, so nearby seeds share items;
    test questions that occur in train or earlier in test are dropped); deterministic bytes."""
    name, config = task
    folder = Path(folder)
    train = reasoning_gym_records(name, n_train, seed, **config)
    seen = {r["question"] for r in train}
    test = []
    for r in reasoning_gym_records(name, 4 * n_test, seed + TEST_SEED_OFFSET, **config):
        if r["question"] not in seen and len(test) < n_test:
            seen.add(r["question"])
            test.append(r)
    if len(test) < n_test:
        raise ValueError(f"only {len(test)} of {n_test} test problems are not in train; use a smaller n_test")
    return [write_records(train, folder / "train.jsonl"), write_records(test, folder / "test.jsonl")]
