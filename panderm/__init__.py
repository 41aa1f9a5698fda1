"""panderm: a toolkit for medical vision foundation models."""

from __future__ import annotations

__version__ = "0.1.0"
