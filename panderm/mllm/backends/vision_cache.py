"""Per-image caches for the `hf` backend: each unique image is preprocessed and vision-encoded once.

In-context-learning runs send the same few demonstration images in many prompts. `VisionCache` keeps, in two
bounded LRUs of `size` images each:

* preprocessing: the image processor's output for one image (e.g. Qwen2-VL's ``pixel_values`` rows and its
  ``image_grid_thw`` row), keyed by the image's key (the `ImagePart`'s sha256 when the backend passes it,
  else a blake2b of the decoded image's mode, size and pixels) and the image processor's options. A batch
  is the per-image outputs concatenated along dim 0. The text side is still the processor's own ``__call__``
  (placeholder expansion, tokenising, padding): it runs on a shallow copy of the processor whose
  ``image_processor`` is a stand-in answering from the cache. Only image processors known to treat each
  image on its own (`PER_IMAGE_PROCESSORS`: the Qwen2-VL family, CLIP, SigLIP) are cached; any other
  processor, or an output that cannot be concatenated, takes the plain processor call, same result.
* vision encoding: while `encoding(model, keys)` is active, the model's ``get_image_features`` (on
  ``model.base_model``, where `generate` and ``forward`` call it) answers from per-image encoder outputs.
  Images are told apart by ``image_grid_thw`` rows (Qwen2-VL family: ``pixel_values`` rows split by
  ``image_grid_thw.prod(-1)``) or by dim 0 of 4-D ``pixel_values`` (one entry per image or crop); an entry
  is keyed by the image key the backend gave (when the counts match) or a blake2b of its pixel rows, plus
  its grid row, dtype and the call's other options. Only the misses go through the real encoder, in one
  call, and the reply keeps the real one's type with ``pooler_output`` (tuple, list or tensor, as the model
  returned it) in image order. Like transformers' own pre-encoded inputs (``mm_encoder_outputs``), a
  reply served from the cache carries ``pooler_output`` only (``last_hidden_state`` is None); a call where
  nothing was cached and no image repeats returns the real output unchanged. Calls whose layout is not
  understood (other tensor options such as ``image_sizes``, 5-D pixels, ``deepstack_features`` in the
  output, ``return_dict=False``) go through uncached, and are still counted.

Counters (`stats()`): ``images_seen`` (images in requests), ``images_preprocessed`` (images that went
through the real image processor), ``images_encoded`` (images or crops that went through the real vision
encoder), ``encoder_calls`` (calls of the real encoder). A model without ``get_image_features`` cannot be
observed: each batch with images counts as one encoder call over all its images.

Replies are the same with and without the cache when the encoder treats each image on its own (true of the
Qwen2-VL vision tower, whose attention is per image, and of CLIP/SigLIP towers); on GPUs a different number
of images per encoder call can change float rounding the way a different batch size does.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from panderm.errors import ConfigError
from panderm.mllm.conversation import LRU

# image processors whose output for a batch is the per-image outputs concatenated along dim 0
PER_IMAGE_PROCESSORS: frozenset[str] = frozenset(
    f"{family}ImageProcessor{flavour}"
    for family in ("Qwen2VL", "CLIP", "Siglip")
    for flavour in ("", "Fast", "Pil")
)
_SIMPLE = (type(None), bool, int, float, str)


def flat_images(images: Any) -> Any:
    """A list of per-text image lists as one flat list in reading order; anything else unchanged."""
    if isinstance(images, list | tuple) and images and all(isinstance(i, list | tuple) for i in images):
        return [image for group in images for image in group]
    return images


class VisionStats:
    """Thread-safe counters: images_seen, images_preprocessed, images_encoded, encoder_calls."""

    NAMES: tuple[str, ...] = ("images_seen", "images_preprocessed", "images_encoded", "encoder_calls")

    def __init__(self) -> None:
        self._counts = dict.fromkeys(self.NAMES, 0)
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                self._counts[name] += count

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def image_digest(image: Image.Image) -> str:
    """blake2b of a decoded image's mode, size and pixels (the key when no ImagePart sha256 is given)."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """blake2b of a tensor's dtype, shape and bytes (copied to the CPU)."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
    flat = tensor.detach().contiguous().reshape(-1)
    digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _options_key(options: dict[str, Any]) -> str | None:
    """A stable text for simple option values (None, bool, int, float, str and tuples/lists of them);
    None when one is anything else (a tensor, an object)."""

    def simple(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return all(simple(v) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and simple(v) for k, v in value.items())
        return isinstance(value, _SIMPLE)

    if not all(simple(v) for v in options.values()):
        return None
    return repr(sorted(options.items()))


# -- preprocessing -------------------------------------------------------------------------------------------


class _CachingImageProcessor:
    """Stands in for `processor.image_processor` inside `CachedImageProcessor`'s processor copy: calls are
    answered per image from the cache, every other attribute is the real image processor's."""

    def __init__(self, owner: CachedImageProcessor) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        if name == "_owner":
            raise AttributeError(name)
        return getattr(self._owner.image_processor, name)

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        return self._owner._process(images, args, kwargs)


class CachedImageProcessor:
    """``processor(text=..., images=..., **options)`` with each unique image preprocessed once.

    `keys` (one per image, e.g. the ImagePart sha256) name the images; without them a decoded image is
    keyed by `image_digest`. Processors it cannot serve (`supported` False) get the plain call.
    """

    def __init__(self, processor: Any, size: int, stats: VisionStats | None = None) -> None:
        self.processor = processor
        self.stats = stats if stats is not None else VisionStats()
        self.image_processor = getattr(processor, "image_processor", None)
        self._cache: LRU[tuple[str, str], dict[str, Any]] = LRU(size)
        self._local = threading.local()
        self.supported = size > 0 and type(self.image_processor).__name__ in PER_IMAGE_PROCESSORS
        self._copy: Any = None
        if self.supported:
            self._copy = copy.copy(processor)
            self._copy.image_processor = _CachingImageProcessor(self)

    def __call__(
        self,
        *,
        text: Any,
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None,
        keys: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """`images` flat, or one list per text (what processors such as Gemma 3's and Mllama's expect);
        `keys` one per image in reading order."""
        count = len(flat_images(images)) if images else 0
        self.stats.add(images_seen=count)
        if not count or not self.supported:
            self.stats.add(images_preprocessed=count)
            return self.processor(text=text, images=images or None, **kwargs)
        self._local.keys = list(keys) if keys is not None and len(keys) == count else None
        self._local.served = False
        try:
            result = self._copy(text=text, images=images, **kwargs)
        finally:
            self._local.keys = None
        if not self._local.served:  # this processor reached the image processor some other way: plain path
            self.stats.add(images_preprocessed=count)
            self.supported = False
        return result

    def _process(self, images: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        real = self.image_processor
        self._local.served = True
        images = flat_images(images)  # per-image processors: a batch is its images in reading order
        listed = isinstance(images, list | tuple) and all(isinstance(i, Image.Image) for i in images)
        options = _options_key(kwargs)
        if args or not listed or options is None:
            return self._plain(images, args, kwargs)
        keys = getattr(self._local, "keys", None)
        if keys is None or len(keys) != len(images):
            keys = [image_digest(image) for image in images]
        outputs: list[dict[str, Any]] = []
        made: dict[tuple[str, str], dict[str, Any]] = {}
        for image, key in zip(images, keys, strict=True):
            entry = (key, options)
            output = made.get(entry) or self._cache.get(entry)
            if output is None:
                output = dict(real([image], **kwargs))
                self.stats.add(images_preprocessed=1)
                made[entry] = output
            outputs.append(output)
        batch = _concatenate(outputs)
        if batch is None:  # an output that does not concatenate: never again for this processor
            self.supported = False
            return self._plain(images, args, kwargs)
        for entry, output in made.items():
            self._cache.put(entry, output)
        from transformers import BatchFeature

        return BatchFeature(batch)

    def _plain(self, images: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        count = len(images) if isinstance(images, list | tuple) else 1
        self.stats.add(images_preprocessed=count)
        return self.image_processor(images, *args, **kwargs)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)


def _concatenate(outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-image outputs joined along dim 0 (tensors) or end to end (lists); None if they do not fit."""
    names = list(outputs[0])
    if any(list(o) != names for o in outputs):
        return None
    batch: dict[str, Any] = {}
    for name in names:
        values = [o[name] for o in outputs]
        if all(isinstance(v, torch.Tensor) for v in values):
            if any(v.ndim == 0 or v.shape[1:] != values[0].shape[1:] for v in values):
                return None
            batch[name] = torch.cat(values, dim=0)
        elif all(isinstance(v, list) for v in values):
            batch[name] = [item for v in values for item in v]
        else:
            return None
    return batch


# -- vision encoding -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoded:
    """One cached encoder output: the image's `pooler_output` piece and how the reply holds the pieces."""

    features: torch.Tensor
    container: str  # "tuple", "list" or "tensor" (pieces keep a leading dim of 1, joined with cat)
    output_type: type


class _EncoderHook:
    """The instance attribute `get_image_features` of a model module while a `VisionEncoderCache` uses it:
    the call goes to the cache active in this thread, else to the real method. Carries the real method's
    signature (`generate` reads it to pick the encoder's arguments)."""

    def __init__(self, original: Callable[..., Any]) -> None:
        functools.update_wrapper(self, original)  # first: it copies the function's __dict__ into ours
        self.original = original
        self.signature = inspect.signature(original)
        self.users = 0
        self.local = threading.local()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        active: VisionEncoderCache | None = getattr(self.local, "active", None)
        if active is None:
            return self.original(*args, **kwargs)
        return active._encode(self, args, kwargs)


_INSTALL_LOCK = threading.Lock()


def encoder_module(model: Any) -> Any:
    """The module whose `get_image_features` `generate` calls (``model.base_model``, else the model)."""
    for candidate in (getattr(model, "base_model", None), model):
        if candidate is not None and callable(getattr(candidate, "get_image_features", None)):
            return candidate
    return None


class VisionEncoderCache:
    """Per-image vision-encoder outputs, used while `encoding(model, keys)` is active."""

    def __init__(self, size: int, stats: VisionStats | None = None) -> None:
        self.size = size
        self.stats = stats if stats is not None else VisionStats()
        self._cache: LRU[tuple[Any, ...], _Encoded] = LRU(size)
        self._local = threading.local()

    @contextmanager
    def encoding(
        self, model: Any, keys: Sequence[str] | None = None, images: int | None = None
    ) -> Iterator[None]:
        """Serve `model`'s ``get_image_features`` from this cache for the block (in this thread).

        `keys` name the request's images in order (e.g. ImagePart sha256); `images` is their count, used
        when the model has no ``get_image_features`` to observe (then one call over all of them is counted).
        """
        count = images if images is not None else len(keys or ())
        module = encoder_module(model)
        if module is None:
            self.stats.add(images_encoded=count, encoder_calls=1 if count else 0)
            yield
            return
        with _INSTALL_LOCK:
            hook = module.__dict__.get("get_image_features")
            if not isinstance(hook, _EncoderHook):
                hook = _EncoderHook(module.get_image_features)
                module.get_image_features = hook
            hook.users += 1
        previous = getattr(hook.local, "active", None), getattr(self._local, "keys", None)
        hook.local.active = self
        self._local.keys = list(keys) if keys is not None else None
        try:
            yield
        finally:
            hook.local.active, self._local.keys = previous
            with _INSTALL_LOCK:
                hook.users -= 1
                if hook.users == 0 and module.__dict__.get("get_image_features") is hook:
                    del module.get_image_features

    def _encode(self, hook: _EncoderHook, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            bound = hook.signature.bind(*args, **kwargs)
        except TypeError:
            return self._through(hook, args, kwargs, None)
        options = dict(bound.arguments)
        for name, parameter in hook.signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                options.update(options.pop(name, {}))
            elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and options.pop(name, ()):
                return self._through(hook, args, kwargs, None)
        pixels = options.pop("pixel_values", None)
        grid = options.pop("image_grid_thw", None)
        layout = _layout(pixels, grid)
        rest = _options_key(options)
        if self.size <= 0 or layout is None or rest is None or options.get("return_dict") is False:
            return self._through(hook, args, kwargs, layout)
        pieces, rows = layout
        keys = getattr(self._local, "keys", None)
        if keys is None or len(keys) != len(pieces):
            keys = [tensor_digest(piece) for piece in pieces]
        entries = [
            (key, tuple(row.tolist()) if row is not None else tuple(piece.shape), str(piece.dtype), rest)
            for key, piece, row in zip(keys, pieces, rows, strict=True)
        ]
        found = {entry: self._cache.get(entry) for entry in dict.fromkeys(entries)}
        misses = [entry for entry, value in found.items() if value is None]
        output = None
        if misses:
            where = [entries.index(entry) for entry in misses]
            call = {**options, "pixel_values": torch.cat([pieces[i] for i in where], dim=0)}
            if grid is not None:
                call["image_grid_thw"] = grid[where]
            output = hook.original(**call)
            self.stats.add(images_encoded=len(misses), encoder_calls=1)
            split = _split_pooled(output, len(misses))
            if split is None:  # an output we cannot cut per image: encode the whole call as it came
                self.size = 0
                self._cache.clear()
                return self._through(hook, args, kwargs, layout)
            for entry, encoded in zip(misses, split, strict=True):
                found[entry] = encoded
                self._cache.put(entry, encoded)
            if len(misses) == len(entries):  # nothing cached, no repeat: the real output as it is
                return output
        return _join([found[entry] for entry in entries])

    def _through(self, hook: _EncoderHook, args: tuple[Any, ...], kwargs: dict[str, Any], layout: Any) -> Any:
        """The real encoder on the call as it came, counted."""
        output = hook.original(*args, **kwargs)
        if layout is not None:
            count = len(layout[0])
        elif getattr(self._local, "keys", None) is not None:
            count = len(self._local.keys)
        else:
            pooled = getattr(output, "pooler_output", None)
            count = len(pooled) if isinstance(pooled, list | tuple | torch.Tensor) else 1
        self.stats.add(images_encoded=count, encoder_calls=1)
        return output

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)


def _layout(pixels: Any, grid: Any) -> tuple[list[torch.Tensor], list[torch.Tensor | None]] | None:
    """The per-image pixel pieces and grid rows of an encoder call, or None when not understood."""
    if not isinstance(pixels, torch.Tensor):
        return None
    if grid is not None:
        if not (isinstance(grid, torch.Tensor) and grid.ndim == 2 and pixels.ndim == 2 and len(grid)):
            return None
        sizes = grid.prod(-1).tolist()
        if sum(sizes) != pixels.shape[0]:
            return None
        return list(torch.split(pixels, sizes)), list(grid)
    if pixels.ndim == 4 and pixels.shape[0] > 0:
        return list(torch.split(pixels, 1)), [None] * pixels.shape[0]
    return None


def _split_pooled(output: Any, count: int) -> list[_Encoded] | None:
    """The real encoder output cut into one cache entry per image, or None when that is not possible."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is None or getattr(output, "deepstack_features", None) is not None:
        return None
    if isinstance(pooled, list | tuple) and len(pooled) == count:
        if not all(isinstance(p, torch.Tensor) for p in pooled):
            return None
        kind, pieces = type(pooled).__name__, list(pooled)
    elif isinstance(pooled, torch.Tensor) and pooled.ndim >= 1 and pooled.shape[0] == count:
        kind, pieces = "tensor", list(torch.split(pooled, 1))
    else:
        return None
    return [_Encoded(piece.detach().clone(), kind, type(output)) for piece in pieces]


def _join(values: list[_Encoded | None]) -> Any:
    """A reply of the real encoder's type holding the pieces' `pooler_output` in order."""
    known = [v for v in values if v is not None]
    first = known[0]
    pieces = [v.features for v in known]
    if first.container == "tensor":
        pooled: Any = torch.cat(pieces, dim=0)
    elif first.container == "list":
        pooled = pieces
    else:
        pooled = tuple(pieces)
    return first.output_type(pooler_output=pooled)


# -- both ----------------------------------------------------------------------------------------------------


class VisionCache:
    """The `hf` backend's image caches: `preprocess` (processor call) and `encoding` (around generate)."""

    def __init__(self, processor: Any, size: int) -> None:
        self.size = self.check_size(size)
        self._stats = VisionStats()
        self.images = CachedImageProcessor(processor, size, self._stats)
        self.encoder = VisionEncoderCache(size, self._stats)

    @staticmethod
    def check_size(size: Any) -> int:
        """`size` if it is an integer >= 0, else ConfigError."""
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"hf backend: image_cache_size must be an integer >= 0, got {size!r}")
        return size

    def preprocess(
        self,
        *,
        text: Any,
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None,
        keys: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``processor(text=text, images=images, **kwargs)``, each unique image preprocessed once."""
        return self.images(text=text, images=images, keys=keys, **kwargs)

    def encoding(self, model: Any, keys: Sequence[str] | None = None, images: int | None = None) -> Any:
        """Context manager: the model's vision encoder answers from the cache inside the block."""
        return self.encoder.encoding(model, keys, images)

    def stats(self) -> dict[str, int]:
        """images_seen, images_preprocessed, images_encoded, encoder_calls."""
        return self._stats.as_dict()

    def clear(self) -> None:
        """Empty both caches (the counters stay)."""
        self.images.clear()
        self.encoder.clear()
