"""Chat-completions backend for any OpenAI-compatible server (OpenAI, vLLM, SGLang, TGI, hosted APIs).

The API key is read from the environment variable named by `api_key_env` when the backend is built; it is
never a config value and never appears in `repr`, `identity()`, logs, error messages or the response cache.
The client makes exactly one attempt per request (``max_retries=0``): retries, backoff and caching belong to
`panderm.mllm.requests.run_requests`.

Request mapping: a system turn becomes ``{"role": "system", "content": str}``; a user turn a content list of
``{"type": "text"}`` and ``{"type": "image_url", "image_url": {"url": "data:<mime>;base64,..."}}`` parts in
the rendered order (only bytes that decode as an image are encoded, re-encoded as PNG where a server's
decoder would show other pixels than panderm's: `ImagePart.request_image`); an
assistant turn (e.g. an in-context demonstration) ``{"role": "assistant", "content": str}``. The token
limit is sent as ``max_completion_tokens`` by default: OpenAI accepts it for every model (``max_tokens`` is
deprecated there and rejected by reasoning models) and vLLM and SGLang accept it too; set
``max_tokens_param="max_tokens"`` for servers that only know the older name (e.g. TGI, old vLLM).

Serving at scale (vLLM, SGLang): `batch_size` is the concurrency, the number of requests in flight at once;
`image_detail` is sent as each image's ``image_url.detail``; `max_image_side` downscales larger images before
they are sent; `max_images` refuses a conversation with more images than the server takes (vLLM's
``--limit-mm-per-prompt``) when it is rendered, so before any request of the run is sent.
"""

from __future__ import annotations

import io
import json
import logging
import os
from base64 import b64encode
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from PIL import Image

from panderm.errors import BackendError, ConfigError
from panderm.mllm.adapters import Adapter
from panderm.mllm.backends.base import Backend, GenerationSettings
from panderm.mllm.conversation import Conversation, ImageMemo, ImagePart, Turn, decode_rgb

log = logging.getLogger(__name__)

NO_KEY_PLACEHOLDER = "EMPTY"  # what vLLM's docs use when the server checks no key
MAX_TOKENS_PARAMS = ("max_completion_tokens", "max_tokens")
# request fields the backend sets itself; extra_body may not override them
RESERVED_FIELDS = frozenset(
    {"model", "messages", "temperature", "top_p", "seed", "stream", "n", *MAX_TOKENS_PARAMS}
)
IMAGE_MEMO_SIZE = 256  # data URLs kept (by image sha256) for reuse across in-context requests
IMAGE_DETAILS = ("auto", "low", "high")  # OpenAI's image_url.detail values


class OpenAIBackend(Backend):
    """Backend over the official `openai` client.

    Options: `model` (the served model name), `base_url` (None: the client's default, i.e. $OPENAI_BASE_URL
    or api.openai.com), `api_key_env` (name of the variable holding the key; None for local servers that check
    none), `timeout` (seconds per request; a slower reply fails as a time-out, which `run_requests` retries),
    `settings` (``max_new_tokens`` is sent as `max_tokens_param`), `adapter`, `batch_size` (the concurrency:
    how many requests are in flight at once, each in its own thread; `run_requests` hands over batches of
    that size), `extra_body` (extra JSON fields for the server, e.g. vLLM's ``{"top_k": 1}``; part of the
    identity) and `max_tokens_param` (see the module docstring).

    Images: `image_detail` (None: not sent; "auto", "low" or "high": sent as ``image_url.detail``, which
    OpenAI's models read as the resolution to look at), `max_image_side` (None: images are sent as they are;
    a number of pixels: an image whose longer side is larger is scaled down to it, aspect kept, with
    Pillow's LANCZOS filter, and sent as PNG; smaller images are sent unchanged) and `max_images` (None: no
    limit; a number: `render` refuses a conversation with more images with a ConfigError, so a run fails
    before any request). `image_detail` and `max_image_side` change what the model sees, so they are part
    of `identity()` (and the cache key) when set.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 120.0,
        settings: GenerationSettings | None = None,
        adapter: str | Adapter = "auto",
        batch_size: int = 1,
        extra_body: Mapping[str, Any] | None = None,
        max_tokens_param: str = "max_completion_tokens",
        image_detail: str | None = None,
        max_image_side: int | None = None,
        max_images: int | None = None,
    ) -> None:
        super().__init__(model, settings=settings, adapter=adapter, batch_size=batch_size)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise ConfigError(f"openai backend: timeout must be a number of seconds > 0, got {timeout!r}")
        if max_tokens_param not in MAX_TOKENS_PARAMS:
            raise ConfigError(
                f"openai backend: max_tokens_param must be one of {', '.join(MAX_TOKENS_PARAMS)}, "
                f"got {max_tokens_param!r}"
            )
        if image_detail is not None and image_detail not in IMAGE_DETAILS:
            raise ConfigError(
                f"openai backend: image_detail must be one of {', '.join(IMAGE_DETAILS)} or None (null), "
                f"got {image_detail!r}"
            )
        self.image_detail = image_detail
        self.max_image_side = _positive_or_none("max_image_side", max_image_side)
        self.max_images = _positive_or_none("max_images", max_images)
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.extra_body = _check_extra_body(extra_body)
        self.max_tokens_param = max_tokens_param
        # an explicit key (never None) also stops the client from reading $OPENAI_API_KEY on its own
        self._client = openai.OpenAI(
            api_key=_read_key(api_key_env), base_url=base_url, timeout=self.timeout, max_retries=0
        )
        self._completions = self._client.chat.completions  # resolve the lazy resource before threads use it
        self.base_url = str(self._client.base_url)
        self._urls: ImageMemo[str] = ImageMemo(IMAGE_MEMO_SIZE)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r}, adapter={self.adapter.name!r}, batch_size={self.batch_size}, "
            f"timeout={self.timeout})"
        )

    def identity(self) -> dict[str, Any]:
        """Settings, adapter, extra_body and, when set, image_detail and max_image_side (the server address,
        the key and max_images, which changes no reply, are not part of it)."""
        images = {"image_detail": self.image_detail, "max_image_side": self.max_image_side}
        return {
            **super().identity(),
            "extra_body": dict(self.extra_body),
            **{k: v for k, v in images.items() if v is not None},  # unset: the keys of earlier runs hold
        }

    def render(self, conversation: Conversation) -> Conversation:
        """The adapter's rendering; ConfigError when it has more than `max_images` images."""
        rendered = super().render(conversation)
        self._check_image_count(rendered)
        return rendered

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        """One reply per rendered conversation, in order; up to `batch_size` requests run concurrently."""
        conversations = list(conversations)
        for conversation in conversations:  # all of them before any request
            self._check_image_count(conversation)
        if self.batch_size == 1 or len(conversations) <= 1:
            return [self._complete(c) for c in conversations]
        workers = min(self.batch_size, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="panderm-openai") as pool:
            futures = [pool.submit(self._complete, c) for c in conversations]
            try:
                return [f.result() for f in futures]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        """The chat-completions `messages` for a rendered conversation (images as base64 data URLs)."""
        return [self._message(i, turn) for i, turn in enumerate(conversation.turns)]

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _image_content(self, part: ImagePart) -> dict[str, Any]:
        url: dict[str, Any] = {"url": self._data_url(part)}
        if self.image_detail is not None:
            url["detail"] = self.image_detail
        return {"type": "image_url", "image_url": url}

    def _message(self, index: int, turn: Turn) -> dict[str, Any]:
        if turn.role != "user":
            if any(isinstance(p, ImagePart) for p in turn.parts):
                raise ConfigError(
                    f"openai backend: turn {index} ({turn.role}) has an image; only user turns may"
                )
            return {"role": turn.role, "content": turn.text}
        content = [
            self._image_content(p) if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
            for p in turn.parts
        ]
        return {"role": "user", "content": content}

    def sent_image(self, part: ImagePart) -> Image.Image:
        """The RGB pixels the server receives for `part` (scaled down to `max_image_side` if larger)."""
        image = decode_rgb(part)
        return fit_within(image, self.max_image_side) if self.max_image_side is not None else image

    def _check_image_count(self, conversation: Conversation) -> None:
        count = len(conversation.images())
        if self.max_images is not None and count > self.max_images:
            raise ConfigError(
                f"openai backend (model={self.model!r}): a conversation has {count} images, more than "
                f"max_images={self.max_images}, so nothing was sent; raise backend.options.max_images (and "
                "the server's own limit, e.g. vLLM's --limit-mm-per-prompt) or send fewer images per prompt "
                "(e.g. fewer in-context demonstrations)"
            )

    def _data_url(self, part: ImagePart) -> str:
        return self._urls.get(part, self._encode)

    def _encode(self, part: ImagePart) -> str:
        """The image as a base64 data URL: `ImagePart.request_image`, or a PNG of `sent_image` when
        `max_image_side` scales it down."""
        if self.max_image_side is not None:
            image = decode_rgb(part)
            if max(image.size) > self.max_image_side:
                buffer = io.BytesIO()
                fit_within(image, self.max_image_side).save(buffer, format="PNG")
                return _url(buffer.getvalue(), "image/png")
        return _url(*part.request_image())

    def _complete(self, conversation: Conversation) -> str:
        settings = self.settings
        request: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(conversation),
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
            self.max_tokens_param: settings.max_new_tokens,
        }
        try:
            completion = self._completions.create(**request, extra_body=dict(self.extra_body) or None)
        except openai.APIStatusError as exc:
            raise self._error(f"HTTP {exc.status_code}: {exc.message}") from None
        except openai.APITimeoutError:
            raise self._error(f"no reply within timeout={self.timeout:g} s") from None
        except openai.APIConnectionError as exc:
            raise self._error(f"connection failed: {exc.__cause__ or exc}") from None
        except (openai.OpenAIError, json.JSONDecodeError) as exc:  # bad JSON escapes the client unwrapped
            raise self._error(f"unusable response: {type(exc).__name__}: {exc}") from None
        return self._content(completion)

    def _content(self, completion: Any) -> str:
        if not isinstance(completion, ChatCompletion):
            raise self._error(f"response is not a chat completion (got {type(completion).__name__})")
        if not completion.choices:
            raise self._error("response has no choices")
        choice = completion.choices[0]
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            refusal = getattr(message, "refusal", None)
            reason = getattr(choice, "finish_reason", None)
            detail = f", refusal={refusal!r}" if refusal else ""
            raise self._error(f"choice 0 has no text content (finish_reason={reason!r}{detail})")
        return content

    def _error(self, detail: str) -> BackendError:
        key = self._client.api_key
        if key and key != NO_KEY_PLACEHOLDER:
            detail = detail.replace(key, "***")  # a server may echo the Authorization header back
        return BackendError(
            f"openai backend (model={self.model!r}, base_url={self.base_url}): {detail:.1000}"
        )


def _read_key(api_key_env: str | None) -> str:
    if api_key_env is None:
        return NO_KEY_PLACEHOLDER
    if not isinstance(api_key_env, str) or not api_key_env:
        raise ConfigError(
            f"openai backend: api_key_env must be an environment variable name or None, got {api_key_env!r}"
        )
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"openai backend: environment variable {api_key_env} (api_key_env) is not set or empty; "
            "export the API key there, or set backend.options.api_key_env=null (api_key_env=None in Python) "
            "for a server that needs no key"
        )
    return key


def _check_extra_body(extra_body: Mapping[str, Any] | None) -> dict[str, Any]:
    if extra_body is None:
        return {}
    if not isinstance(extra_body, Mapping):
        raise ConfigError(f"openai backend: extra_body must be a mapping, got {type(extra_body).__name__}")
    body = dict(extra_body)
    clash = sorted(RESERVED_FIELDS.intersection(body))
    if clash:
        raise ConfigError(
            f"openai backend: extra_body sets {', '.join(clash)}, which the backend sets from model/settings"
        )
    try:
        json.dumps(body, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"openai backend: extra_body must be JSON-serialisable ({exc})") from None
    return body


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """`image` scaled down (aspect kept, LANCZOS) so that its longer side is `max_side`; itself if it fits."""
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _positive_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"openai backend: {name} must be a positive integer or None (null), got {value!r}")
    return value


def _url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{b64encode(data).decode('ascii')}"
