"""The LoRA fine-tuning family shared by ``lora_gsm8k`` and ``lora_sst2``: see ``runs``, ``analysis``, ``findings``."""
