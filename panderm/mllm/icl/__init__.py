"""Multimodal in-context learning (ICL) experiments, SMMILE-compatible: problems, prompts, strategies
(permutations, recency, noise), offline baselines, scoring and analysis; `panderm icl` runs them."""
