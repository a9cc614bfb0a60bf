"""LoRA fine-tuning with PEFT: adapter geometry, the flight recorder, the seed's configurations.

* :mod:`.geometry` — ΔW = (α/r)·B·A of every adapter from its r × r core: stable rank, utilization,
  dominance, κ, effective rank.
* :mod:`.flight` — the flight recorder (``FlightRecorder`` for a plain loop, ``GradienceCallback``
  for a ``transformers.Trainer``) writing the tidy telemetry table.
* :mod:`.adapters` — the seed's LoRA configurations, target sets, Mistral-7B on the meta device.
* :mod:`.finetune` — training, perplexity, greedy exact-match and classification scoring.
* :mod:`.base_models` — the offline base models (SmolLM2-135M, all-MiniLM-L6-v2).

A runnable example (tiny random Mistral; any Hugging Face causal LM works the same way)::

    import torch
    from transformers import MistralForCausalLM
    from gradience.lora import adapters, flight

    model = adapters.apply_lora(MistralForCausalLM(adapters.tiny_mistral_config()),
                                adapters.SEED_CONFIGS["attn_r8_lr5e5"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rec = flight.FlightRecorder("demo", every=1).attach(model, opt)
    ids = torch.randint(3, 384, (4, 16))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    print(rec.frame().query("scope == 'model'"))
"""
