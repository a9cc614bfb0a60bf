"""LoRA fine-tuning and scoring of the two seed tasks, for any ``transformers`` model (tiny or 7B).

* Question answering (GSM8K schema): the model sees ``PROMPT.format(question=…)`` followed by the
  answer and the end-of-sequence token; the loss is on the answer tokens only (prompt tokens
  are labelled -100). Sequences longer than ``max_length`` tokens are cut at the end (a free
  choice: the default profile keeps ``max_length`` above its longest problem). Scoring: greedy
  decoding of up to ``max_new_tokens`` tokens after the prompt, exact match of the number after
  ``####`` (:func:`gradience.tasks.gsm.exact_match`).
* Classification (SST-2 schema): a sequence-classification head on the pooled / last token, the
  head trained with the adapter (PEFT's ``task_type="SEQ_CLS"`` puts it in ``modules_to_save``);
  scoring: accuracy of the arg-max label.
* Perplexity: exp of the mean cross-entropy over the labelled (answer) tokens of a split.

The loop is plain PyTorch (AdamW, constant learning rate, batches drawn by a seeded permutation per
epoch), so :class:`gradience.lora.flight.FlightRecorder` attaches to its optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradience.tasks.gsm import exact_match

PROMPT = "Question: {question}\nAnswer:"
IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Right-padded token ids, attention mask and labels (per token for LMs, per example for classifiers)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = self.attention_mask[idx]
        width = int(mask.sum(1).max())  # right padding: drop all-pad columns
        labels = self.labels[idx]
        return {"input_ids": self.input_ids[idx, :width], "attention_mask": mask[:, :width],
                "labels": labels[:, :width] if labels.ndim == 2 else labels}

    def token_lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def encode_qa(tokenizer, records: Sequence[dict], max_length: int) -> Encoded:
    """Prompt + answer + EOS per record, labels on the answer (and EOS) tokens only."""
    ids, labels = [], []
    for rec in records:
        p = tokenizer(PROMPT.format(question=rec["question"]))["input_ids"]
        a = tokenizer(" " + rec["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seq = (p + a)[:max_length]
        ids.append(seq)
        labels.append(([IGNORE] * len(p) + a)[:max_length])
    return Encoded(_pad(ids, tokenizer.pad_token_id), _pad([[1] * len(s) for s in ids], 0), _pad(labels, IGNORE))


def encode_classification(tokenizer, records: Sequence[dict], max_length: int) -> Encoded:
    """``sentence`` → token ids (truncated to ``max_length``), ``label`` → class id."""
    enc = tokenizer([r["sentence"] for r in records], truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt")
    return Encoded(enc["input_ids"], enc["attention_mask"], torch.tensor([int(r["label"]) for r in records]))


def batches(n: int, batch_size: int, steps: int, seed: int):
    """``steps`` index batches from a seeded permutation per epoch (the last short batch of an epoch is dropped
    unless the split is smaller than a batch)."""
    g = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch_size)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=g)
        for b in range(per_epoch):
            if done == steps:
                return
            yield perm[b * batch_size:(b + 1) * batch_size]
            done += 1


def train(model: nn.Module, data: Encoded, steps: int, batch_size: int, lr: float, seed: int = 0,
          weight_decay: float = 0.0, recorder=None, after_step=None) -> list[float]:
    """AdamW on the trainable parameters for ``steps`` updates; returns the batch losses.

    A non-finite batch loss ends the run before its update (the run diverged, as in
    :func:`gradience.training.train`): it is the last loss returned, see :func:`diverged_at`.
    ``recorder``: a :class:`~gradience.lora.flight.FlightRecorder`, attached to the optimizer.
    ``after_step(step)``: called after update ``step`` (1-based), e.g. to evaluate; the model is put
    back in training mode afterwards."""
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps ≥ 0, batch_size ≥ 1, lr > 0; got {steps}, {batch_size}, {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if recorder is not None:
        recorder.attach(model, opt)
    model.train()
    losses = []
    device = next(model.parameters()).device
    for idx in batches(len(data), batch_size, steps, seed):
        loss = model(**to_device(data.batch(idx), device)).loss
        if not math.isfinite(float(loss.detach())):
            losses.append(float(loss.detach()))
            break
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(len(losses))
            model.train()
    if recorder is not None:
        recorder.finish(model)
        recorder.detach()
    model.eval()
    return losses


def diverged_at(losses: list[float]) -> int | None:
    """The step whose batch loss was non-finite (the run stopped there, see :func:`train`), else ``None``."""
    return len(losses) - 1 if losses and not math.isfinite(losses[-1]) else None


@torch.no_grad()
def mean_token_loss(model: nn.Module, data: Encoded, batch_size: int = 16) -> float:
    """Mean cross-entropy over all labelled tokens of ``data`` (log of :func:`perplexity`)."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(data), batch_size):
        b = to_device(data.batch(torch.arange(start, min(start + batch_size, len(data)))), device)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                       ignore_index=IGNORE, reduction="sum"))
        count += int((labels != IGNORE).sum())
    return total / count


def perplexity(model: nn.Module, data: Encoded, batch_size: int = 16) -> float:
    return math.exp(mean_token_loss(model, data, batch_size))


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer, questions: Sequence[str], max_new_tokens: int,
                   batch_size: int = 8) -> list[str]:
    """Greedy continuations of the prompts (left-padded batches), decoded without special tokens."""
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for start in range(0, len(questions), batch_size):
            prompts = [PROMPT.format(question=q) for q in questions[start:start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def qa_accuracy(model: nn.Module, tokenizer, records: Sequence[dict], max_new_tokens: int,
                batch_size: int = 8) -> tuple[float, list[str]]:
    """GSM8K exact-match accuracy under greedy decoding, and the decoded answers."""
    preds = greedy_answers(model, tokenizer, [r["question"] for r in records], max_new_tokens, batch_size)
    return sum(exact_match(p, r["answer"]) for p, r in zip(preds, records, strict=True)) / len(records), preds


@torch.no_grad()
def class_logits(model: nn.Module, data: Encoded, batch_size: int = 32) -> torch.Tensor:
    """The classifier's logits for every example of ``data`` (float32, on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(data), batch_size):
        b = to_device(data.batch(torch.arange(start, min(start + batch_size, len(data)))), device)
        out.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float().cpu())
    return torch.cat(out)


def classification_accuracy(model: nn.Module, data: Encoded, batch_size: int = 32) -> float:
    return float((class_logits(model, data, batch_size).argmax(-1) == data.labels).float().mean())


def classification_loss(model: nn.Module, data: Encoded, batch_size: int = 32) -> float:
    """Mean cross-entropy of the labels (log of the classifier's "perplexity", exp of this)."""
    return float(F.cross_entropy(class_logits(model, data, batch_size), data.labels))
