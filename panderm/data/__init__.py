"""Data layer: manifests, datasets, readers for real formats, transforms and synthetic data."""

from __future__ import annotations

from panderm.data.manifest import Manifest, build_manifest, format_boxes, parse_boxes, read_manifest

__all__ = ["Manifest", "build_manifest", "format_boxes", "parse_boxes", "read_manifest"]
