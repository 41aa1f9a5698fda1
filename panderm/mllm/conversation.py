"""One conversation type for every multimodal LLM backend: ordered turns of text and image parts.

Build conversations with the chaining helpers, which work on the class or on an instance::

    conv = Conversation.system("You are a dermatologist.").user("What is this?", ImagePart(path="a.png"))

`canonical()` gives the JSON-able form the response cache hashes; images appear there as the sha256 of their
bytes, so the same image under two paths gives the same key.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from PIL import Image

from panderm.data.images import decode_image, portable_image
from panderm.errors import ConfigError, DataError, ImageLoadError

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class TextPart:
    """A piece of text inside a turn."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image inside a turn: exactly one of `path` (read lazily, once) or in-memory `data`.

    `source` says where the image came from (e.g. ``"problems.csv row 3"``) for error messages; it is not part
    of the image's identity. `checked_bytes()` is what anything that sends or decodes the image uses.
    """

    path: Path | None = None
    data: bytes | None = None
    mime: str = "image/png"
    source: str = field(default="", compare=False)
    _cached: list[bytes] = field(default_factory=list, init=False, repr=False, compare=False)
    _decodes: list[bool] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ConfigError("ImagePart needs exactly one of path= or data=")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(os.fspath(self.path)))
        if self.data is not None and not isinstance(self.data, bytes):
            raise ConfigError(f"ImagePart data must be bytes, got {type(self.data).__name__}")

    def bytes(self) -> bytes:
        """The image's bytes, unchecked (what identifies it); a file is read on first use and cached.
        Raises DataError if it is missing."""
        if self.data is not None:
            return self.data
        if not self._cached:
            try:
                self._cached.append(self.path.read_bytes())  # type: ignore[union-attr]
            except OSError as exc:
                raise DataError(f"{self.where()}: cannot read image ({exc.strerror or exc})") from exc
        return self._cached[0]

    def checked_bytes(self) -> bytes:
        """`bytes()` once they are known to decode as an image (decoded in full on first use through
        `panderm.data.images.decode_image`): only such bytes may be sent to a model. Raises `ImageLoadError`
        (a DataError) naming `where()` when they do not decode."""
        if not self._decodes:
            _decode(self, "RGB")
        return self.bytes()

    def request_image(self) -> tuple[bytes, str]:
        """(bytes, MIME type) to send to a model server: `checked_bytes()`, re-encoded as PNG where other
        decoders would show other pixels than panderm's (EXIF rotation, 16-bit samples;
        `panderm.data.images.portable_image`)."""
        data, mime = portable_image(self.checked_bytes(), self.where())
        return data, mime or self.mime

    def sha256(self) -> str:
        """Hex sha256 of the image bytes (what identifies the image in `Conversation.canonical()`)."""
        return hashlib.sha256(self.bytes()).hexdigest()

    def where(self) -> str:
        """The image as messages name it: its `source` and path, or the in-memory bytes' sha256."""
        name = str(self.path) if self.path is not None else f"in-memory image sha256 {self.sha256()[:12]}"
        return f"{self.source} ({name})" if self.source else name


def _decode(part: ImagePart, mode: str) -> np.ndarray:
    """The part's pixels as uint8 by `panderm.data.images.decode_image` (the one decoder of every loader);
    ImageLoadError naming `part.where()` when the bytes are not an image."""
    try:
        pixels = decode_image(part.bytes(), part.where(), mode=mode)
    except ImageLoadError as exc:  # decode_image also turns Pillow's bomb error into one
        raise ImageLoadError(
            part.where(), f"not an image, so it is neither decoded nor sent to a model ({exc.reason})"
        ) from exc
    part._decodes.append(True)
    return pixels


def check_images(parts: Iterable[ImagePart]) -> list[str]:
    """Decode-check every part (`ImagePart.checked_bytes`), each distinct content once; one line per image
    that is missing or not an image, naming it, so that a run can refuse them all before any request."""
    problems: list[str] = []
    seen: dict[str, bool] = {}  # sha256 -> decodes; the same bytes under another part need no second decode
    for part in parts:
        if part._decodes:
            continue
        try:
            digest = part.sha256()
            if digest not in seen:
                seen[digest] = False
                part.checked_bytes()
                seen[digest] = True
            elif seen[digest]:
                part._decodes.append(True)
            else:
                part.checked_bytes()
        except DataError as exc:
            problems.append(str(exc))
    return problems


def decode_rgb(part: ImagePart) -> Image.Image:
    """The image decoded as RGB; ImageLoadError (a DataError) naming the image if it is not one."""
    return Image.fromarray(_decode(part, "RGB"))


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class LRU(Generic[_K, _V]):
    """A bounded, thread-safe least-recently-used map (size 0 keeps nothing). Written here because
    functools.lru_cache memoises a function, not values that callers put and look up."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            if key not in self._values:
                return None
            self._values.move_to_end(key)
            return self._values[key]

    def put(self, key: _K, value: _V) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


class ImageMemo(Generic[_V]):
    """Values made from images (decoded pixels, base64 text) in an `LRU` keyed by the bytes' sha256:
    in-context runs send the same few images in many requests."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: LRU[str, _V] = LRU(size)

    def get(self, part: ImagePart, make: Callable[[ImagePart], _V]) -> _V:
        """The value for `part`, made by `make(part)` the first time (outside the lock)."""
        key = part.sha256()
        value = self._values.get(key)
        if value is None:
            value = make(part)
            self._values.put(key, value)
        return value

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


Part = TextPart | ImagePart


def _as_part(part: str | Part) -> Part:
    if isinstance(part, str):
        return TextPart(part)
    if isinstance(part, TextPart | ImagePart):
        return part
    raise ConfigError(f"a turn part must be str, TextPart or ImagePart, got {type(part).__name__}")


@dataclass(frozen=True)
class Turn:
    """One message: a role ("system", "user" or "assistant") and a non-empty tuple of parts."""

    role: str
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(_as_part(p) for p in self.parts))
        problems = []
        if self.role not in ROLES:
            problems.append(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not any(isinstance(p, ImagePart) or p.text for p in self.parts):
            problems.append(f"{self.role!r} turn is empty (give it text or an image)")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def text(self) -> str:
        """The turn's text parts joined by newlines."""
        return "\n".join(p.text for p in self.parts if isinstance(p, TextPart))


_T = TypeVar("_T")


class _chain(Generic[_T]):
    """Method usable on the class (starting from an empty conversation) or on an instance."""

    def __init__(self, func: Callable[..., _T]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, owner: type) -> Callable[..., _T]:
        target = owner() if obj is None else obj
        return self.func.__get__(target, owner)


@dataclass(frozen=True)
class Conversation:
    """Ordered turns; a system turn may only come first. Immutable: builders return a new conversation."""

    turns: tuple[Turn, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", tuple(self.turns))
        problems = [
            f"turn {i}: expected a Turn, got {type(t).__name__}"
            for i, t in enumerate(self.turns)
            if not isinstance(t, Turn)
        ]
        problems += [
            f"turn {i}: a system turn may only be the first turn"
            for i, t in enumerate(self.turns)
            if i > 0 and isinstance(t, Turn) and t.role == "system"
        ]
        if problems:
            raise ConfigError("invalid conversation: " + "; ".join(problems))

    def add(self, role: str, *parts: str | Part) -> Conversation:
        """A new conversation with one more turn of `role` made of `parts` (str becomes TextPart)."""
        return Conversation((*self.turns, Turn(role, tuple(parts))))

    @_chain
    def system(self, text: str) -> Conversation:
        """Append a system turn (only allowed as the first turn)."""
        return self.add("system", text)

    @_chain
    def user(self, *parts: str | Part) -> Conversation:
        """Append a user turn of text and/or image parts."""
        return self.add("user", *parts)

    @_chain
    def assistant(self, text: str) -> Conversation:
        """Append an assistant turn (e.g. an in-context example answer)."""
        return self.add("assistant", text)

    def images(self) -> list[ImagePart]:
        """Every image part, in conversation order."""
        return [p for t in self.turns for p in t.parts if isinstance(p, ImagePart)]

    def canonical(self) -> list[dict[str, Any]]:
        """JSON-able form for hashing: images become {"type": "image", "sha256", "mime"}, never paths."""
        return [{"role": t.role, "parts": [_canonical_part(p) for p in t.parts]} for t in self.turns]

    @classmethod
    def from_turns(cls, turns: Iterable[tuple[str, Iterable[str | Part]]]) -> Conversation:
        """Build from (role, parts) pairs."""
        return cls(tuple(Turn(role, tuple(parts)) for role, parts in turns))


def _canonical_part(part: Part) -> dict[str, str]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return {"type": "image", "sha256": part.sha256(), "mime": part.mime}
