"""Segmentation heads on frozen or fine-tuned encoders: data, training, sliding-window prediction, metrics,
classical baselines, the `panderm segment` command (`run`) and its demo stage."""
