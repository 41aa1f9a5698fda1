"""Conversation type: parts, builders, canonical form and validation."""

from __future__ import annotations

import hashlib

import pytest

from panderm.errors import ConfigError, DataError
from panderm.mllm.conversation import Conversation, ImagePart, TextPart, Turn


def test_builders_chain_from_class_and_instance(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG-fake")
    conv = Conversation.system("sys").user("what is this?", ImagePart(path=img)).assistant("a nevus")
    assert [t.role for t in conv.turns] == ["system", "user", "assistant"]
    assert conv.turns[1].parts[0] == TextPart("what is this?")
    assert conv.turns[1].text == "what is this?"
    assert Conversation().user("q") == Conversation.user("q")
    base = Conversation.user("q")
    base.assistant("a")
    assert len(base.turns) == 1  # builders return new conversations


def test_images_in_order_and_bytes_cached(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    conv = (
        Conversation.user(ImagePart(path=a), "x")
        .assistant("y")
        .user(ImagePart(data=b"C"), ImagePart(path=str(b)))
    )
    images = conv.images()
    assert [im.bytes() for im in images] == [b"A", b"C", b"B"]
    a.unlink()
    assert images[0].bytes() == b"A"  # read once, cached


def test_canonical_uses_image_hash_not_path(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "sub" / "copy.png"
    b.parent.mkdir()
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    ca = Conversation.user("q", ImagePart(path=a)).canonical()
    cb = Conversation.user("q", ImagePart(path=b)).canonical()
    cd = Conversation.user("q", ImagePart(data=b"same")).canonical()
    assert ca == cb == cd
    assert ca[0]["parts"][1] == {
        "type": "image",
        "sha256": hashlib.sha256(b"same").hexdigest(),
        "mime": "image/png",
    }
    assert str(a) not in repr(ca)


def test_missing_image_raises_data_error_naming_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match=r"nope\.png"):
        Conversation.user(ImagePart(path=missing)).canonical()


def test_image_part_needs_exactly_one_source(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        ImagePart()
    with pytest.raises(ConfigError, match="exactly one"):
        ImagePart(path=tmp_path / "a.png", data=b"x")


def test_validation_errors():
    with pytest.raises(ConfigError, match="role 'tool'"):
        Turn("tool", ("x",))
    with pytest.raises(ConfigError, match="empty"):
        Conversation.user()
    with pytest.raises(ConfigError, match="empty"):
        Conversation.user("")
    with pytest.raises(ConfigError, match="turn 1: a system turn may only be the first"):
        Conversation.user("q").system("late")
    with pytest.raises(ConfigError, match=r"turn 1.*turn 2"):
        Conversation([Turn("system", ("a",)), Turn("system", ("b",)), Turn("system", ("c",))])
    with pytest.raises(ConfigError, match="part must be"):
        Conversation.user(3)  # type: ignore[arg-type]


def test_from_turns():
    conv = Conversation.from_turns([("system", ["s"]), ("user", ["q"])])
    assert conv == Conversation.system("s").user("q")
