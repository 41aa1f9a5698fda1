"""Synthetic data generators with real structure (SynthDerm, SynthCXR)."""
