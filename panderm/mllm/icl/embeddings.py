"""Image embeddings from one of our encoders, for kNN-ICL and for finding the most similar demo."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from panderm.data.transforms import eval_transform
from panderm.mllm.backends.base import resolve_device
from panderm.mllm.conversation import ImageMemo, ImagePart, decode_rgb
from panderm.models.checkpoints import checkpoint_paths, load_encoder, read_metadata

_MEMO_SIZE = 4096  # embeddings are small; ICL experiments reuse each image in many prompts


class ImageEmbedder:
    """L2-normalised CLS features of a saved panderm encoder (`panderm export` / the pretrain stage's
    `encoder.safetensors`), at the encoder's evaluation transform; each image is embedded once."""

    def __init__(self, encoder: str | os.PathLike[str], *, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.encoder = load_encoder(encoder, map_location=self.device)
        self.weights_sha256 = str(read_metadata(checkpoint_paths(encoder)[1]).get("weights_sha256", ""))
        spec = self.encoder.spec
        self._transform = eval_transform(spec.image_size, mean=spec.mean, std=spec.std)
        self._memo: ImageMemo[np.ndarray] = ImageMemo(_MEMO_SIZE)

    @torch.inference_mode()
    def _embed_one(self, part: ImagePart) -> np.ndarray:
        x = self._transform(image=np.asarray(decode_rgb(part)))["image"][None].to(self.device)
        feature = self.encoder.features(x, "cls")[0].float()
        return torch.nn.functional.normalize(feature, dim=0).cpu().numpy()

    def embed(self, parts: Sequence[ImagePart]) -> np.ndarray:
        """(len(parts), D) unit vectors."""
        return np.stack([self._memo.get(p, self._embed_one) for p in parts])

    def similarity(self, candidates: Sequence[ImagePart], query: ImagePart) -> np.ndarray:
        """Cosine similarity of each candidate image to the query image."""
        return self.embed(candidates) @ self.embed([query])[0]
