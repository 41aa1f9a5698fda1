"""Conversation type: parts, builders, canonical form and validation."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from panderm.errors import ConfigError, DataError, ImageLoadError
from panderm.mllm.conversation import Conversation, ImagePart, TextPart, Turn, check_images, decode_rgb


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


def test_only_bytes_that_decode_as_an_image_are_handed_out_for_sending(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((3, 5, 3), 7, np.uint8)).save(buffer, format="PNG")
    good = ImagePart(data=buffer.getvalue(), source="p.csv row 2")
    assert good.checked_bytes() == buffer.getvalue() and decode_rgb(good).size == (5, 3)
    (tmp_path / "secret.png").write_text("root:x:0:0")
    bad = ImagePart(path=tmp_path / "secret.png", source="v.jsonl line 7")
    assert bad.bytes() == b"root:x:0:0"  # hashing needs the bytes; sending needs an image
    for use in (bad.checked_bytes, lambda: decode_rgb(bad)):
        with pytest.raises(ImageLoadError, match=r"v\.jsonl line 7 \(.*secret\.png\): not an image"):
            use()
    twin = ImagePart(data=buffer.getvalue())  # the same content as `good`: not decoded a second time
    problems = check_images([good, bad, twin, ImagePart(data=b"GIF89a")])
    assert len(problems) == 2 and "line 7" in problems[0] and "in-memory image sha256" in problems[1]


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
