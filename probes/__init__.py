"""Frozen-encoder evaluation (later issue)."""
