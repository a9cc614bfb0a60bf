"""Every metric name in the telemetry, defined once. ``docs/glossary.md`` is this table, written by
``python -m gradience.telemetry.glossary`` (a test keeps the two equal)."""

from __future__ import annotations

import re

GLOSSARY: dict[str, str] = {
    # weights (per matrix; scope = parameter name), telemetry/spectral.py
    "kappa": "σ_max / σ_min of a weight matrix; inf when rank-deficient (σ_min ≤ σ_max·max(m,n)·eps). "
             "At scope `model`: the largest κ over the weight matrices",
    "kappa_r": "σ_max / σ_r, σ_r the smallest singular value above the rank tolerance (finite κ)",
    "numerical_rank": "number of singular values above σ_max·max(m,n)·eps (numpy's matrix_rank rule)",
    "stable_rank": "‖W‖_F² / ‖W‖_2²",
    "effective_rank": "Roy–Vetterli: exp(H(p)), p = σ / ‖σ‖₁. At scope `model`: the mean over matrices",
    "nuclear_norm": "Σ σ_i",
    "spectral_norm": "σ_max",
    "frobenius_norm": "‖W‖_F = (Σ σ_i²)^½",
    "alpha": "power-law decay exponent: least-squares slope of log σ_i on log i over ranks 1..numerical "
             "rank, σ_i ∝ i^-α. Not WeightWatcher's α (the exponent of the power-law tail of the density of "
             "the eigenvalues σ_i² of WᵀW): for σ_i ∝ i^-α that density falls as λ^-(1 + 1/(2α)) "
             "(tests/test_references.py)",
    # training state (scope `model`), training.py
    "train_loss": "mean cross-entropy over the training split (or its first eval_max_examples)",
    "test_loss": "mean cross-entropy over the test split",
    "train_acc": "accuracy over the training split",
    "test_acc": "accuracy over the test split",
    "batch_loss": "loss of the batch that produces the next update",
    "grad_norm": "global L2 norm of that batch's gradient (before clipping). At a weight matrix's scope: "
                 "‖∂L/∂W‖_F (telemetry/gradients.py)",
    # gradient statistics (telemetry/gradients.py)
    "grad_cosine": "cosine between the gradient at this measured step and at the previous measured step "
                   "(one cadence interval earlier); per weight matrix and at scope `model` over all parameters",
    "grad_noise_scale": "B_simple = tr Σ / ‖G‖² (McCandlish et al. 2018): Σ the per-example gradient "
                        "covariance (fixed training subsample), G the full-batch gradient",
    "grad_noise_trace": "tr Σ, the unbiased per-example gradient variance summed over parameters (subsample)",
    "weight_norm": "global L2 norm of all trainable parameters",
    "lr": "learning rate used for the next update",
    "diverged": "1 at the step where the loss or gradient became non-finite (the run stops there)",
    # Hessian probe on a fixed measurement batch (telemetry/probes.py, telemetry/curvature.py)
    "hessian_top{i}": "i-th largest (algebraic) Hessian eigenvalue, ARPACK Lanczos on torch.func HVPs",
    "hessian_lambda_max": "hessian_top1, the sharpness",
    "hessian_trace": "Hutchinson estimate of tr H (mean of zᵀHz over Rademacher probes z)",
    "hessian_trace_stderr": "standard error of hessian_trace: std(zᵀHz) / √(probes)",
    "edge_2_over_lr": "2/η, the edge of stability of full-batch gradient descent at the next update's η",
    "sharpness_over_edge": "λ_max·η/2: ≥ 1 means at or past the edge of stability (GD)",
    "hessian_n_hvp": "Hessian-vector products spent on the measurement (Lanczos + Hutchinson)",
    "hessian_failed": "1 when Lanczos could not run (non-finite HVPs of a blown-up model); values are nan",
    "lambda_max": "λ_max tracked every cadence step: Lanczos warm-started from the previous step's top eigenvector, stopped at ‖Hv − λv‖ ≤ tol·λ (hessian.track_tol; fisher_geometry: sharpness_tol)",
    "lambda_max_residual": "‖Hv − λv‖ of the tracked top eigenpair (bounds its eigenvalue error, Bauer–Fike)",
    "lambda_max_n_hvp": "Hessian-vector products the tracked λ_max cost at that step",
    "lambda_max_failed": "1 when the tracked λ_max could not be computed (non-finite HVPs); value nan",
    "lambda_max_restart": "1 where the cold Lanczos λ₁ exceeded the tracked λ_max beyond its residual and tracking restarted cold",
    "lambda_max_cold_gap": "(cold Lanczos λ₁ − tracked λ_max) / cold λ₁ at the cold measurement steps",
    # Fisher probe, per kind: prefix emp_ (observed labels) or true_ (labels sampled from the model)
    "{emp,true}_fisher_top{i}": "i-th eigenvalue of F = GᵀG/n, G the per-sample gradients (n × n Gram trick)",
    "{emp,true}_fisher_trace": "tr F",
    "{emp,true}_fisher_trace_sq": "tr F²",
    "{emp,true}_fisher_eff_dim": "participation ratio (tr F)² / tr F² (low = anisotropic)",
    "{emp,true}_fisher_kappa_k": "λ₁/λ_k of F (k = top_k; F has rank ≤ n, so its full κ is infinite)",
    "{emp,true}_fisher_alpha": "power-law exponent of √λ_i ∝ i^-α over F's non-zero eigenvalues (like `alpha`)",
    "{emp,true}_ng_alignment@δ": "cos(∇L, (F + λI)⁻¹∇L) at relative damping λ = δ·λ₁(F), ∇L at observed labels",
    "{emp,true}_fisher_overlap": "share of F's top eigenvector (its block in W) inside span{u_i v_jᵀ: i, j ≤ r} "
                                 "of W's top singular pairs; at scope `model`, energy-weighted over matrices",
    "{emp,true}_fisher_overlap_chance": "expected fisher_overlap of a random direction, Σ (r²/mn)‖B‖² / Σ ‖B‖²",
    "{emp,true}_fisher_overlap_enrichment": "fisher_overlap / fisher_overlap_chance (1 = chance)",
    "{emp,true}_fisher_share": "share of tr F (within W) in span{u_i v_jᵀ: i, j ≤ r} of W's top singular pairs, "
                               "tr(P_W F)/tr(F_W); at scope `model`, summed over matrices",
    "{emp,true}_fisher_share_chance": "expected fisher_share of an isotropic F, Σ (r²/mn) tr F_W / Σ tr F_W",
    "{emp,true}_fisher_share_enrichment": "fisher_share / fisher_share_chance (1 = chance)",
    "{emp,true}_fisher_share_w0": "fisher_share with the initial weights W₀'s top singular pairs (same F)",
    "{emp,true}_fisher_share_w0_enrichment": "Σ tr(P_W F) / Σ tr(P_W₀ F): alignment over the W₀ null (1 at step 0)",
    "{emp,true}_fisher_overlap_w0": "fisher_overlap with the initial weights W₀'s top singular pairs (same F)",
    "{emp,true}_fisher_overlap_w0_enrichment": "fisher_overlap / fisher_overlap_w0: alignment over the W₀ null",
    "{emp,true}_grad_span_fraction": "‖P_F ∇L‖² / ‖∇L‖²: the part of the gradient inside span(F) (rank ≤ n)",
    "{emp,true}_ng_span@δ": "cos(∇L_F, (F + λI)⁺∇L_F) inside span(F), ∇L_F = P_F ∇L, λ = δ·λ₁(F); @pinv: λ = 0 (F⁺)",
    "blew_up": "1 where the training loss exceeded blowup_factor × its step-0 value (the run stops there; "
               "studies/lm_regimes/runs.py)",
    # spectral edge: the update window (telemetry/edge.py)
    "edge_sigma{i}_sq": "i-th largest eigenvalue σ_i² of the update Gram matrix G = X Xᵀ, X the last W "
                        "parameter updates (rows, flattened trainable parameters; telemetry/edge.py)",
    "edge_gap": "σ_1 / σ_2 of the update window (singular-value gap ratio at the edge)",
    "edge_gap23": "σ_2 / σ_3 of the update window",
    "edge_share": "σ_1² / tr G: share of the window's update energy along the edge direction v_1",
    "edge_grad_energy": "Σ⟨g_t,v_1⟩² / (Σ⟨g_t,v_1⟩² + Σ⟨d_t,v_1⟩²) over the window: the gradient part's share "
                        "of the energy along the edge (g_t = AdamW's −η m̂/(√v̂+ε), d_t = −ηλθ_{t−1})",
    "edge_grad_decay_cos": "cosine between the window sequences ⟨g_t,v_1⟩ and ⟨d_t,v_1⟩ (+1: gradient and "
                           "decay push the same way along the edge)",
    "edge_grad_decay_agree": "fraction of window steps with ⟨g_t,v_1⟩·⟨d_t,v_1⟩ > 0",
    "edge_rotation": "angle (degrees, sign-free) between the edge direction and the previous measured one",
    "grad_decay_cos": "window mean of the full-space cosine between an update's gradient and decay parts",
    "update_grad_norm": "window mean of ‖g_t‖, the gradient part of the AdamW update",
    "update_decay_norm": "window mean of ‖d_t‖ = η λ ‖θ_{t−1}‖, the weight-decay part of the update",
    "edge_window": "number of updates in the window when measured (≤ W)",
    # LoRA adapters, ΔW = (α/r)·B·A (lora/geometry.py)
    "lora_stable_rank": "stable rank of a LoRA update ΔW = s·B·A (s = α/r): ‖ΔW‖_F² / ‖ΔW‖_2². At scope "
                        "`model`: the mean over adapted modules",
    "utilization": "lora_stable_rank / r. At scope `model`: the mean over adapted modules",
    "lora_kappa": "σ_1 / σ_r of ΔW's r non-zero singular values (its r × r core); inf when the core is rank-deficient",
    "lora_kappa_r": "σ_1 / σ_k of ΔW, σ_k the smallest singular value above the rank tolerance",
    "lora_effective_rank": "Roy–Vetterli effective rank of ΔW, exp(H(σ / ‖σ‖₁)). At scope `model`: the mean",
    "lora_spectral_norm": "‖ΔW‖_2",
    "lora_frobenius_norm": "‖ΔW‖_F",
    "lora_numerical_rank": "number of ΔW's singular values above σ_1·max(out, in)·eps",
    "dominance": "‖ΔW‖_2 / ‖W‖_2, W the frozen base weight (worst-case relative change of the layer map). "
                 "At scope `model`: the largest over adapted modules",
    "dominance_fro": "‖ΔW‖_F / ‖W‖_F (average-case relative change for isotropic inputs). At scope `model`: "
                     "the largest over adapted modules",
    # LoRA flight recorder's monitor (lora/flight.py)
    "train_ppl": "exp(mean token cross-entropy) on the training split (answer tokens for question/answer tasks)",
    "test_ppl": "exp(mean token cross-entropy) on the test split",
    "ppl_ratio": "test_ppl / train_ppl, the generalisation gap the monitor watches",
    "memorisation": "1 where ppl_ratio > the monitor's threshold (1.5, the seed's rule) and its warning was "
                    "logged, else 0",
    # >>> spectral_edge (metrics its stage logs; keep this marker line)
    "probe_r2_{linear,quadratic,mlp}": "spectral_edge: held-out R² of a probe of the Dyck-1 depth from the final "
                                       "hidden state (telemetry.edge.probe_pipeline: ridge; PCA-32 + degree-2 + ridge; "
                                       "one-hidden-layer MLP), fitted on train-sequence positions, scored on test ones",
    "adamw_weight_decay": "spectral_edge: the AdamW weight decay λ in force at that step (0 after removal)",
    "{train,test}_seq_acc": "spectral_edge (SCAN): fraction of commands whose whole action sequence is right "
                            "(teacher-forced argmax at every target, the same as greedy decoding being exact)",
    # >>> gradient_rank (metrics its stage logs; keep this marker line)
    "grad_er": "gradient_rank: Roy–Vetterli effective rank of the true gradient ∂L/∂W of a 2-D weight on the "
               "step's batch (telemetry/kbasis.py)",
    "grad_er_{mean,max}": "gradient_rank: mean / max of grad_er over all 2-D weight matrices (scope `model`)",
    "grad_er_layer{i}": "gradient_rank: mean of grad_er over decoder layer i's matrices (scope `model`)",
    "k{i}_er": "gradient_rank: effective rank of the K-constrained gradient U_K diag(U_Kᵀ G V_K) V_Kᵀ, K = i, "
               "U_K, V_K the weight's top-K singular vectors (= ER of the K coefficients' gradient ∂L/∂a); "
               "at scope `model` the mean over matrices",
    "k{i}_coverage": "gradient_rank: 100 · k{i}_er / grad_er (%); at scope `model` the mean over matrices",
    "k{i}_cos": "gradient_rank: cos(G, P_K G), P_K G the projection of ∂L/∂W on span{u_j v_jᵀ, j ≤ K} (what "
                "K-basis adaptation can express) = ‖diag(U_Kᵀ G V_K)‖ / ‖G‖_F; at scope `model` the mean",
    "k{i}_cos_subspace": "gradient_rank: cos(G, U_K U_Kᵀ G V_K V_Kᵀ) = ‖U_Kᵀ G V_K‖_F / ‖G‖_F (two-sided "
                         "projection on the top-K singular subspaces); at scope `model` the mean",
    "k{i}": "gradient_rank: k95, the smallest K whose k{K}_er reaches 95 % of grad_er (nan when even "
            "K = min(m, n) does not); at scope `model` the mean over matrices where finite",
    "k{i}_layer{i}": "gradient_rank: k95 averaged over decoder layer i's matrices (where finite; scope `model`)",
    # >>> lora_gsm8k (metrics its stage logs; keep this marker line)
    # lora_gsm8k / lora_sst2 log the flight recorder's metrics (above), grad_norm, batch_loss and test_acc
    # (exact match after '####' for lora_gsm8k, label accuracy for lora_sst2) — all defined above.
    # >>> lora_sst2 (metrics its stage logs; keep this marker line)
    # >>> rosetta (metrics its stage logs; keep this marker line)
    "adam_eps": "rosetta: Adam ε of a weight matrix (rule 2: max(σ_k², √ε·σ_max²) of the initial weight, or the conventional ε)",
    "weight_decay": "rosetta: weight decay of a weight matrix (rule 4: λ₀·σ_k/σ_max of the initial weight, or λ₀)",
    "eta_{ceiling,sps,weyl,step}": "rosetta rule 1 on the measurement batch: 2/λ_max, Polyak (L − 0)/‖g‖², "
                                   "min_W σ_k(W)/‖∂L/∂W‖₂, and their minimum clamped to [ε, 1/√ε] (the SGD step used)",
    "binding_{ceiling,sps,weyl,lr_min,lr_max}": "rosetta: 1 where that term (or clamp) set the MASS step",
    "lora_rank": "rosetta: LoRA rank of a module (rule 11: tail_dims, capped at r_max; or the conventional r)",
    "lora_scale": "rosetta: LoRA scale s = α/r of a module (rule 10 with spectral init: 1)",
    "tail_dims": "rosetta rule 11: min(m, n) − ⌊erank(W)⌋ of a candidate module's base weight",
    "lora_dropout": "rosetta: the adapter's dropout (rule 13: mean over targets of (1 − erank/full)·(r/full))",
    "n_targets": "rosetta: number of LoRA target modules (rule 12: candidates with tail_dims > 0)",
    "budget_ratio_max": "rosetta rules 5/9: max over LoRA modules of ‖s·BA‖₂/σ_k(W₀) after each update (step 0: at initialisation)",
}


def pattern(name: str) -> re.Pattern[str]:
    """The metric names a glossary entry covers: ``{i}`` is a number, ``{a,b}`` a choice, ``δ`` any value."""
    regex = re.escape(name).replace(r"\{i\}", r"\d+").replace("δ", ".+")
    regex = re.sub(r"\\\{([a-z_]+(?:,[a-z_]+)+)\\\}", lambda m: "(" + m.group(1).replace(",", "|") + ")", regex)
    return re.compile(regex + "$")


def undefined(metrics: set[str]) -> set[str]:
    """The metric names that no glossary entry defines."""
    patterns = [pattern(name) for name in GLOSSARY]
    return {m for m in metrics if not any(p.match(m) for p in patterns)}


def markdown() -> str:
    rows = "\n".join(f"| `{name}` | {text} |" for name, text in GLOSSARY.items())
    return "| metric | definition |\n| --- | --- |\n" + rows


PAGE = "docs/glossary.md"


def page() -> str:
    """``docs/glossary.md``: the glossary as a page."""
    return ("# Metric glossary\n\n"
            "Every metric name in the telemetry tables (`metric` column), defined once in "
            "`src/gradience/telemetry/glossary.py`; this page is written from it by "
            "`python -m gradience.telemetry.glossary` (a test keeps the two equal). The per-run quantities of "
            "each study (grok step, κ_recovery, lead times, verdict rules) are defined in the docstrings of its "
            "`src/gradience/studies/<study>/` modules. A name with `{i}` stands for a numbered family "
            "(`hessian_top1`, `hessian_top2`, …).\n\n" + markdown() + "\n")


if __name__ == "__main__":
    from pathlib import Path

    Path(PAGE).write_text(page())
    print(f"wrote {PAGE}")
