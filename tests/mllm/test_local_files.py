"""Nothing outside the image root is read or sent, only real images leave the machine, and a run whose calls
all failed does not pass: `panderm vqa` and `panderm icl` through the CLI (openai backend against the local
server on 127.0.0.1, and the offline majority baseline)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panderm.cli import main
from panderm.data.images import load_image
from panderm.errors import DataError, ManifestError
from panderm.mllm.icl.problems import load_problems
from panderm.mllm.medrega import read_medrega

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """An image root with one image; outside it a real image and a text file that must never be sent."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "inside.png").write_bytes(png(10))
    (outside / "outside.png").write_bytes(png(200))
    (outside / "passwd").write_bytes(SECRET)
    return {"root": root, "outside": outside, "tmp": tmp_path}


def vqa_file(root: Path, images: list[str]) -> Path:
    path = root / "vqa.jsonl"
    records = [
        {
            "id": i,
            "image": image,
            "conversations": [
                {"from": "human", "value": f"<image>\nIs lesion {i} red?"},
                {"from": "gpt", "value": "yes"},
            ],
        }
        for i, image in enumerate(images)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def icl_file(root: Path, *queries: dict[str, str]) -> Path:
    """One problem per query: a demo with the inside image (rows 1, 3, ...), then the query row (rows 2, 4,
    ...) with the given `image` / `image_url`."""
    path = root / "problems.jsonl"
    rows = [
        row
        for i, query in enumerate(queries)
        for row in (
            {
                "problem_id": f"p{i}",
                "order": 1,
                "question": f"Colour {i}?",
                "answer": "red",
                "image": "inside.png",
            },
            {"problem_id": f"p{i}", "order": 2, "question": f"Colour {i}?", "answer": "red", **query},
        )
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def openai_args(server, command: str) -> list[str]:
    return [
        command,
        "backend=openai",
        "backend.model=served-model",
        f"backend.options.base_url={server.base_url}",
        "backend.options.api_key_env=null",
        "backend.batch_size=1",
        "progress=false",
        "retries=1",
        "backoff=0",
    ]


def sent_images(server) -> list[bytes]:
    """The bytes of every image the server received."""
    return [
        base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
        for body in server.bodies()
        for message in body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


def run_cli(args: list[str], run: Path, capsys) -> tuple[int, str]:
    code = main([*args, f"hydra.run.dir={run}"])
    return code, capsys.readouterr().err


def test_vqa_refuses_paths_outside_the_root_before_any_request(files, chat_server, capsys):
    root, outside = files["root"], files["outside"]
    data = vqa_file(root, ["inside.png", "../outside/passwd", str(outside / "passwd")])
    code, err = run_cli(
        [*openai_args(chat_server, "vqa"), f"data={data}", f"image_root={root}"], files["tmp"] / "r", capsys
    )
    assert code == 1 and chat_server.requests == []
    assert "line 2" in err and "line 3" in err and "line 1:" not in err
    assert str(data) in err and "allow_outside_root=true" in err
    assert not (files["tmp"] / "r" / "responses.jsonl").exists()


def test_vqa_opt_in_sends_a_real_image_but_never_a_non_image(files, chat_server, capsys):
    root = files["root"]
    args = [*openai_args(chat_server, "vqa"), f"image_root={root}", "allow_outside_root=true"]
    data = vqa_file(root, ["inside.png", "../outside/outside.png"])
    code, _ = run_cli([*args, f"data={data}"], files["tmp"] / "ok", capsys)
    assert code == 0 and sorted(sent_images(chat_server)) == sorted([png(10), png(200)])
    chat_server.requests.clear()
    data = vqa_file(root, ["inside.png", "../outside/passwd"])
    code, err = run_cli([*args, f"data={data}"], files["tmp"] / "bad", capsys)
    assert code == 1 and chat_server.requests == []
    assert "passwd" in err and "line 2" in err and "not an image" in err


def test_a_rotated_phone_photo_reaches_the_server_as_panderm_sees_it(files, chat_server, capsys):
    """A JPEG tagged EXIF "rotate 90" is sent as a PNG of the oriented pixels (a server ignoring EXIF would
    otherwise see it landscape, in other coordinates than its boxes); an untagged image goes byte for byte."""
    root = files["root"]
    photo = np.zeros((8, 16, 3), np.uint8)
    photo[:, 8:] = 250
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    Image.fromarray(photo).save(root / "phone.jpg", quality=95, exif=exif.tobytes())
    data = vqa_file(root, ["phone.jpg", "inside.png"])
    code, _ = run_cli([*openai_args(chat_server, "vqa"), f"data={data}"], files["tmp"] / "r", capsys)
    assert code == 0
    sent_bytes = sent_images(chat_server)
    assert len(sent_bytes) == 2 and png(10) in sent_bytes
    (rotated,) = [b for b in sent_bytes if b != png(10)]
    with Image.open(io.BytesIO(rotated)) as sent:
        assert sent.format == "PNG" and sent.size == (8, 16)  # portrait: width 8, height 16
        np.testing.assert_array_equal(np.asarray(sent.convert("RGB")), load_image(root / "phone.jpg"))


@pytest.mark.parametrize("backend", ["openai", "majority"])
def test_icl_refuses_paths_outside_the_root(files, chat_server, capsys, backend):
    outside = files["outside"]
    problems = icl_file(
        files["root"],
        {"image": "../outside/passwd"},
        {"image_url": f"file://{outside}/passwd"},
        {"image": str(outside / "passwd")},
        {"image": "inside.png"},
    )
    args = openai_args(chat_server, "icl") if backend == "openai" else ["icl", "progress=false"]
    code, err = run_cli(
        [*args, f"problems={problems}", "strategy=original", "n_boot=10"], files["tmp"] / "r", capsys
    )
    assert code == 1 and chat_server.requests == []
    assert all(f"row {i}:" in err for i in (2, 4, 6)) and "row 8:" not in err
    assert str(problems) in err and "allow_outside_root=true" in err
    assert not (files["tmp"] / "r" / "responses.jsonl").exists()


@pytest.mark.parametrize("backend", ["openai", "majority"])
def test_icl_opt_in_still_refuses_non_images(files, chat_server, capsys, backend):
    args = openai_args(chat_server, "icl") if backend == "openai" else ["icl", "progress=false"]
    common = [*args, "strategy=original", "n_boot=10", "allow_outside_root=true"]
    problems = icl_file(files["root"], {"image": "../outside/outside.png"})
    code, _ = run_cli([*common, f"problems={problems}"], files["tmp"] / "ok", capsys)
    assert code == 0
    if backend == "openai":
        assert sorted(sent_images(chat_server)) == sorted([png(10), png(200)])
        chat_server.requests.clear()
    problems = icl_file(
        files["root"],
        {"image": "../outside/passwd"},
        {"image_url": "data:image/png;base64," + base64.b64encode(SECRET).decode()},
        {"image": "inside.png"},
    )
    code, err = run_cli([*common, f"problems={problems}"], files["tmp"] / "bad", capsys)
    assert code == 1 and chat_server.requests == []
    assert "row 2 (" in err and "row 4 (" in err and "row 6" not in err and "not an image" in err
    assert "passwd" in err


def test_loaders_confine_paths_and_name_every_row(files):
    root, outside = files["root"], files["outside"]
    data = vqa_file(root, ["../outside/passwd", "inside.png", str(outside / "outside.png")])
    with pytest.raises(ManifestError) as err:
        read_medrega(data)
    assert [p.split(":")[0] for p in err.value.problems] == ["line 1", "line 3"]
    samples = read_medrega(data, allow_outside_root=True)
    assert samples[0].image == outside / "passwd" and samples[2].image == outside / "outside.png"
    problems = icl_file(root, {"image": "../outside/outside.png"})
    with pytest.raises(ManifestError, match="row 2"):
        load_problems(problems)
    (problem,) = load_problems(problems, allow_outside_root=True).problems
    assert problem.query.image.path == outside / "outside.png"
    assert problem.query.image.bytes() == png(200)


def test_a_data_url_that_is_not_an_image_is_refused_where_it_is_encoded(files):
    problems = icl_file(
        files["root"], {"image_url": "data:image/png;base64," + base64.b64encode(SECRET).decode()}
    )
    (problem,) = load_problems(problems).problems
    with pytest.raises(DataError, match=r"row 2.*not an image"):
        problem.query.image.checked_bytes()
    assert problem.demos[0].image.checked_bytes() == png(10)


def test_a_vqa_run_whose_calls_all_failed_exits_non_zero(files, chat_server, capsys):
    root = files["root"]
    data = vqa_file(root, ["inside.png", "inside.png", "inside.png"])
    args = [*openai_args(chat_server, "vqa"), f"data={data}"]
    chat_server.fail_next(2, 500)
    chat_server.misbehave_next(1, "no_choices")
    code, err = run_cli(args, files["tmp"] / "r", capsys)
    assert code == 1 and len(chat_server.requests) == 3
    assert "3 of 3 requests failed" in err and "HTTP 500: 2" in err and "empty choices: 1" in err
    assert "injected failure 500" in err and "max_failed_fraction" in err
    assert not (files["tmp"] / "r" / "metrics.json").exists()
    chat_server.fail_next(3, 500)
    code, _ = run_cli([*args, "max_failed_fraction=1.0"], files["tmp"] / "allowed", capsys)
    assert code == 0
    assert json.loads((files["tmp"] / "allowed" / "metrics.json").read_text())["n_failed"] == 3


def test_a_partly_failed_run_passes_and_says_how_many_failed(files, chat_server, capsys):
    root = files["root"]
    data = vqa_file(root, ["inside.png", "inside.png"])
    chat_server.fail_next(1, 503)
    args = [*openai_args(chat_server, "vqa"), f"data={data}"]
    code, _ = run_cli(args, files["tmp"] / "r", capsys)
    assert (
        code == 0 and "1 of 2 requests failed (HTTP 503: 1)" in (files["tmp"] / "r" / "vqa.log").read_text()
    )
    assert json.loads((files["tmp"] / "r" / "metrics.json").read_text())["n_failed"] == 1
    chat_server.fail_next(1, 500)
    code, err = run_cli([*args, "max_failed_fraction=0"], files["tmp"] / "strict", capsys)
    assert code == 1 and "1 of 2 requests failed" in err


def test_an_icl_run_whose_calls_all_failed_exits_non_zero(files, chat_server, capsys):
    problems = icl_file(files["root"], {"image": "inside.png"})
    chat_server.fail_next(1, 500)
    code, err = run_cli(
        [*openai_args(chat_server, "icl"), f"problems={problems}", "strategy=original", "n_boot=10"],
        files["tmp"] / "r",
        capsys,
    )
    assert code == 1 and "1 of 1 requests failed" in err and "HTTP 500: 1" in err
