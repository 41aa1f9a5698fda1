"""Local Hugging Face vision-language models (Qwen2-VL, LLaVA, MedGemma, ...) through transformers.

`HFBackend(model)` loads `AutoProcessor` and `AutoModelForImageTextToText` from a local folder or a hub id,
renders each conversation with the model's chat template (images as ``{"type": "image"}`` content items in
the conversation's part order), and generates replies in batches of `batch_size` with left padding, so a
batched reply is the reply the conversation gets alone. Greedy when ``settings.temperature == 0``,
otherwise sampling seeded with ``settings.seed`` (the draw then depends on the batch it is in).
Images are decoded through a small memo, and each unique image is preprocessed and vision-encoded once
(bounded per-image caches, see panderm.mllm.backends.vision_cache).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from panderm.errors import BackendError
from panderm.mllm.adapters import Adapter, adapter_for
from panderm.mllm.backends.base import Backend, GenerationSettings, resolve_device
from panderm.mllm.backends.vision_cache import VisionCache
from panderm.mllm.conversation import Conversation, ImageMemo, ImagePart, TextPart, decode_rgb
from panderm.mllm.regions import REGION_TOKENS

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MEMO_SIZE = 64  # decoded images kept; in-context runs reuse a few example images across many requests


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on CUDA, float32 elsewhere; or one of float32, bfloat16, float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise BackendError(f"hf backend: dtype={dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


# Processors that pad every prompt of a batch to the batch's largest image count. With Mllama, transformers
# lets the text before a prompt's first image attend to those empty slots (Meta's reference masks that
# output), so a reply would depend on its neighbours' image counts: such batches are formed per count.
IMAGE_SLOT_PROCESSORS = frozenset({"MllamaProcessor"})


def prompt_text(processor: Any, conversation: Conversation) -> str:
    """The prompt text for a rendered conversation: the processor's chat template, or for a processor
    without one (PaliGemma) the plain format: one image token per image, then the turns' texts, one line
    per turn (the processor adds what its family puts around them, e.g. PaliGemma's BOS and newline).
    ValueError when the chat template refuses the conversation."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(
            HFBackend.messages(conversation), add_generation_prompt=True, tokenize=False
        )
    image_token = getattr(processor, "image_token", None)
    if conversation.images() and not image_token:
        raise ValueError("the processor has neither a chat template nor an image token")
    lines = [turn.text for turn in conversation.turns]
    return str(image_token or "") * len(conversation.images()) + "\n".join(line for line in lines if line)


def dropped_special_ids(tokenizer: Any) -> frozenset[int]:
    """The special token ids a reply drops: every special token except those of `REGION_TOKENS` (a box
    Qwen writes as ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` keeps its markers for the region layer)."""
    specials = {int(i) for i in getattr(tokenizer, "all_special_ids", ())}
    for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            specials.add(int(token_id))
    return frozenset(
        i for i in specials if not REGION_TOKENS.fullmatch(str(tokenizer.convert_ids_to_tokens(i) or ""))
    )


def decode_replies(tokenizer: Any, tokens: torch.Tensor, dropped: frozenset[int]) -> list[str]:
    """Each row of generated `tokens` as text without the `dropped` ids, stripped."""
    rows = [[i for i in row if i not in dropped] for row in tokens.tolist()]
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=False)]


def _check_model_location(model: str) -> None:
    """Fail fast, naming the path, when `model` is meant as a local folder that is not there.

    A string that is not a folder but looks like a hub id ("org/name") is left to transformers.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise BackendError(f"hf backend: model path {model} is a file, not a model folder")
    looks_local = model.startswith(("/", ".", "~")) or "\\" in model or not _HUB_ID.match(model)
    if looks_local:
        raise BackendError(f"hf backend: model path {model} does not exist")


class HFBackend(Backend):
    """A transformers image-text-to-text model run in this process; ``adapter="auto"`` picks the prompt
    adapter from the folder's config.json (`model_type`), not from the folder's name.

    Options: `model` (local folder or hub id), `settings`, `adapter`, `batch_size`, `device` ("auto": cuda
    if available else cpu), `dtype` ("auto": bfloat16 on CUDA, float32 on CPU), `local_files_only` (False:
    a hub id may be downloaded into the Hugging Face cache like any transformers model; True: only what is
    already there is used, for offline clusters). Local folders never touch the network.

    `image_cache_size` (256): how many images the per-image caches keep, each: the image processor's
    output and the vision encoder's output for an image, keyed by the image bytes' sha256, so in-context
    runs that send the same demonstration images in many prompts preprocess and encode each once
    (replies are unchanged). 0 turns both caches off. `vision_stats()` counts images seen, preprocessed and
    encoded, and encoder calls; `close()` empties the caches.
    """

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        settings: GenerationSettings | None = None,
        adapter: str | Adapter = "auto",
        batch_size: int = 1,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        local_files_only: bool = False,
        image_cache_size: int = 256,
    ) -> None:
        super().__init__(str(model), settings=settings, adapter=adapter, batch_size=batch_size)
        VisionCache.check_size(image_cache_size)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        _check_model_location(self.model)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(self.model, local_files_only=local_files_only)
            model_obj = AutoModelForImageTextToText.from_pretrained(
                self.model, dtype=self.dtype, local_files_only=local_files_only
            )
        except Exception as exc:  # missing files, unknown architecture, hub errors: all name the model
            raise BackendError(
                f"hf backend: cannot load model {self.model}: {type(exc).__name__}: {exc}"
            ) from exc
        self._attach(model_obj.to(self.device), processor, image_cache_size)

    @classmethod
    def from_pretrained_objects(
        cls,
        model_obj: Any,
        processor: Any,
        *,
        name: str | None = None,
        settings: GenerationSettings | None = None,
        adapter: str | Adapter = "auto",
        batch_size: int = 1,
        image_cache_size: int = 256,
    ) -> HFBackend:
        """A backend around an already loaded model and processor (kept on their device and dtype).

        `name` is the model id used in cache keys (default: the model's `name_or_path`); give distinct names
        to distinct weights. ``adapter="auto"`` goes by the model's config (its `model_type`), else `name`.
        """
        self = cls.__new__(cls)
        model_name = name or getattr(model_obj, "name_or_path", "") or type(model_obj).__name__
        if adapter == "auto":
            config = getattr(model_obj, "config", None)
            family = {key: getattr(config, key, None) for key in ("model_type", "architectures")}
            adapter = adapter_for(model_name, config=family)
        Backend.__init__(self, model_name, settings=settings, adapter=adapter, batch_size=batch_size)
        self.device = model_obj.device
        self.dtype = model_obj.dtype
        self._attach(model_obj, processor, image_cache_size)
        return self

    def _attach(self, model_obj: Any, processor: Any, image_cache_size: int) -> None:
        self._model = model_obj.eval()
        self._processor = processor
        self._images: ImageMemo[Image.Image] = ImageMemo(_MEMO_SIZE)
        self._vision = VisionCache(processor, image_cache_size)
        tokenizer = getattr(processor, "tokenizer", processor)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_token_id = pad
        self._tokenizer = tokenizer
        self._dropped = dropped_special_ids(tokenizer)

    def vision_stats(self) -> dict[str, int]:
        """Counters since the backend was built: images_seen (images in requests), images_preprocessed
        (through the image processor), images_encoded (through the vision encoder), encoder_calls."""
        return self._vision.stats()

    @property
    def processor(self) -> Any:
        """The transformers processor (tokenizer, image processor, chat template)."""
        return self._loaded()[1]

    def identity(self) -> dict[str, Any]:
        """Base identity plus the weights' dtype (bfloat16 and float32 replies differ)."""
        return {**super().identity(), "dtype": str(self.dtype).removeprefix("torch.")}

    # -- prompts -------------------------------------------------------------------------------------------

    @staticmethod
    def messages(conversation: Conversation) -> list[dict[str, Any]]:
        """The conversation in transformers' chat format, parts in the conversation's order."""
        return [
            {
                "role": turn.role,
                "content": [
                    {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
                    for p in turn.parts
                ],
            }
            for turn in conversation.turns
        ]

    def prompt_text(self, conversation: Conversation) -> str:
        """The text `generate` sends for an already rendered conversation (before the processor expands
        each image placeholder to the image's token count): see `prompt_text`."""
        try:
            return prompt_text(self._loaded()[1], conversation)
        except ValueError as exc:  # e.g. a chat template that refuses the conversation's roles
            raise BackendError(
                f"hf backend: model {self.model}: cannot apply the chat template: {exc}"
            ) from exc

    def _image(self, part: ImagePart) -> Image.Image:
        """The decoded RGB image, from a small memo keyed by the bytes' sha256."""
        return self._images.get(part, decode_rgb)

    # -- generation ----------------------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        """One reply per rendered conversation, run in chunks of `batch_size` (for processors that pad image
        slots, `IMAGE_SLOT_PROCESSORS`, each chunk holds prompts with one number of images)."""
        indices = list(range(len(conversations)))
        groups: list[list[int]] = [indices]
        if type(self._loaded()[1]).__name__ in IMAGE_SLOT_PROCESSORS:
            count = {i: len(conversations[i].images()) for i in indices}
            groups = [[i for i in indices if count[i] == n] for n in sorted(set(count.values()))]
        replies: list[str] = [""] * len(conversations)
        for group in groups:
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                batch = self._generate_batch([conversations[i] for i in chunk])
                for i, reply in zip(chunk, batch, strict=True):
                    replies[i] = reply
        return replies

    def _generate_batch(self, conversations: Sequence[Conversation]) -> list[str]:
        model = self._loaded()[0]
        texts = [self.prompt_text(c) for c in conversations]
        parts = [c.images() for c in conversations]
        # one image list per prompt: processors such as Gemma 3's, Mllama's and PaliGemma's pair images with
        # prompts by it (a flat list is read as one image per prompt); per-image processors flatten it
        images = [[self._image(p) for p in group] for group in parts]
        keys = [p.sha256() for group in parts for p in group]
        count = len(keys)
        settings = self.settings
        options: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "pad_token_id": self._pad_token_id,
            "do_sample": not settings.greedy,
        }
        if settings.greedy:
            # unset the checkpoint's own sampling defaults, which would only warn under greedy decoding
            options.update(temperature=None, top_p=None, top_k=None)
        else:
            # top_k=0: our settings alone decide the sampling, not a top_k in the checkpoint's defaults
            options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        try:
            inputs = self._vision.preprocess(
                text=texts,
                images=images if count else None,
                keys=keys,
                padding=True,
                padding_side="left",
                return_tensors="pt",
            ).to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            inputs.pop("labels", None)  # PaliGemma's processor adds training labels; generation needs none
            with (
                torch.inference_mode(),
                torch.random.fork_rng(devices=self._rng_devices()),
                self._vision.encoding(model, keys, count),
            ):
                torch.manual_seed(settings.seed)
                output = model.generate(**inputs, **options)
        except Exception as exc:  # processor or model failure, out of memory included
            raise BackendError(
                f"hf backend: model {self.model}: generation failed for a batch of {len(texts)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return decode_replies(self._tokenizer, new_tokens, self._dropped)

    def _rng_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            raise BackendError(f"hf backend: model {self.model} was closed; build a new backend")
        return self._model, self._processor

    def close(self) -> None:
        """Drop the model, processor, image memo and image caches, and return cached GPU memory."""
        self._model = None
        self._processor = None
        self._images.clear()
        self._vision.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
