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
"""

from __future__ import annotations

import json
import logging
import os
from base64 import b64encode
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from panderm.errors import BackendError, ConfigError
from panderm.mllm.adapters import Adapter
from panderm.mllm.backends.base import Backend, GenerationSettings
from panderm.mllm.conversation import Conversation, ImageMemo, ImagePart, Turn

log = logging.getLogger(__name__)

NO_KEY_PLACEHOLDER = "EMPTY"  # what vLLM's docs use when the server checks no key
MAX_TOKENS_PARAMS = ("max_completion_tokens", "max_tokens")
# request fields the backend sets itself; extra_body may not override them
RESERVED_FIELDS = frozenset(
    {"model", "messages", "temperature", "top_p", "seed", "stream", "n", *MAX_TOKENS_PARAMS}
)
IMAGE_MEMO_SIZE = 256  # data URLs kept (by image sha256) for reuse across in-context requests


class OpenAIBackend(Backend):
    """Backend over the official `openai` client.

    Options: `model` (the served model name), `base_url` (None: the client's default, i.e. $OPENAI_BASE_URL
    or api.openai.com), `api_key_env` (name of the variable holding the key; None for local servers that check
    none), `timeout` (seconds per request), `settings`, `adapter`, `batch_size` (concurrent requests),
    `extra_body` (extra JSON fields for the server, e.g. vLLM's ``{"top_k": 1}``; part of the identity) and
    `max_tokens_param` (see the module docstring).
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
    ) -> None:
        super().__init__(model, settings=settings, adapter=adapter, batch_size=batch_size)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise ConfigError(f"openai backend: timeout must be a number of seconds > 0, got {timeout!r}")
        if max_tokens_param not in MAX_TOKENS_PARAMS:
            raise ConfigError(
                f"openai backend: max_tokens_param must be one of {', '.join(MAX_TOKENS_PARAMS)}, "
                f"got {max_tokens_param!r}"
            )
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
        """Settings, adapter and extra_body (the server address and the key are not part of it)."""
        return {**super().identity(), "extra_body": dict(self.extra_body)}

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        """One reply per rendered conversation, in order; up to `batch_size` requests run concurrently."""
        conversations = list(conversations)
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

    def _message(self, index: int, turn: Turn) -> dict[str, Any]:
        if turn.role != "user":
            if any(isinstance(p, ImagePart) for p in turn.parts):
                raise ConfigError(
                    f"openai backend: turn {index} ({turn.role}) has an image; only user turns may"
                )
            return {"role": turn.role, "content": turn.text}
        content = [
            {"type": "image_url", "image_url": {"url": self._data_url(p)}}
            if isinstance(p, ImagePart)
            else {"type": "text", "text": p.text}
            for p in turn.parts
        ]
        return {"role": "user", "content": content}

    def _data_url(self, part: ImagePart) -> str:
        return self._urls.get(part, _data_url)

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


def _data_url(part: ImagePart) -> str:
    """The image as a base64 data URL of the bytes other decoders show as panderm does (`request_image`)."""
    data, mime = part.request_image()
    return f"data:{mime};base64,{b64encode(data).decode('ascii')}"
