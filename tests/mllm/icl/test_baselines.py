"""Offline ICL baselines: random, majority (tie rule) and kNN-ICL, checked against hand-worked answers."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panderm.errors import BackendError
from panderm.mllm.backends import GenerationSettings, build_backend
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.icl.baselines import demonstrations
from panderm.mllm.icl.problems import Example
from panderm.mllm.icl.prompts import icl_conversation
from panderm.models.checkpoints import save_encoder
from panderm.models.encoder import create_encoder


def image(seed: int) -> ImagePart:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return ImagePart(data=buffer.getvalue())


def conversation(
    answers: list[str], query_image: ImagePart | None = None, images: list[int] | None = None
) -> Conversation:
    seeds = images or list(range(len(answers)))
    demos = [Example("Diagnosis?", a, image(s)) for a, s in zip(answers, seeds, strict=True)]
    return icl_conversation(demos, Example("Diagnosis?", "?", query_image or image(99)))


def test_demonstrations_are_read_back() -> None:
    demo, query = image(1), image(2)
    conv = Conversation().system("sys").user(demo, "Q?").assistant("a").user("no image").assistant("b")
    demos, found = demonstrations(conv.user("Q?", query))
    assert demos == [(demo, "a"), (None, "b")] and found == query
    with pytest.raises(BackendError, match="no demonstrations"):
        demonstrations(Conversation().user(image(1), "Q?"))
    with pytest.raises(BackendError, match="does not end with a user turn"):
        demonstrations(conv)


def test_majority_and_its_tie_rule() -> None:
    majority = build_backend("majority")
    replies = majority.generate(
        [
            conversation(["Nevus.", "melanoma", "nevus", "bcc"]),  # normalised nevus x2: first spelling
            conversation(["bcc", "melanoma", "melanoma", "bcc"]),  # tie: the first in the prompt
            conversation(["melanoma", "bcc", "bcc", "melanoma"]),
        ]
    )
    assert replies == ["Nevus.", "bcc", "melanoma"]


def test_random_is_seeded_and_uniform_over_demos() -> None:
    answers = ["a", "b", "b", "b"]
    convs = [conversation(answers, query_image=image(100 + i)) for i in range(400)]
    first = build_backend("random", settings=GenerationSettings(seed=0)).generate(convs)
    assert first == build_backend("random", settings=GenerationSettings(seed=0)).generate(convs)
    assert first != build_backend("random", settings=GenerationSettings(seed=1)).generate(convs)
    assert set(first) == {"a", "b"}
    assert 0.65 < Counter(first)["b"] / len(first) < 0.85  # 3 of 4 demos say b
    assert build_backend("random").generate(convs[:1]) == build_backend("random").generate(convs[:1][::-1])


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    encoder = create_encoder("vit_tiny", patch_size=8, image_size=32, depth=1)
    return save_encoder(encoder, tmp_path_factory.mktemp("enc") / "encoder")


def test_knn_icl_answers_like_the_most_similar_demo(encoder_path: Path) -> None:
    knn = build_backend("knn_icl", encoder=encoder_path, device="cpu")
    assert knn.model.startswith("knn_icl(encoder=")
    # the query image is demo 2's image: its answer wins whatever the order
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        answers = [["x", "y", "z"][i] for i in order]
        assert knn.generate(
            [conversation(answers, query_image=image(12), images=[10 + i for i in order])]
        ) == ["z"]
    # against an independent cosine computation
    embed = knn.embedder
    demos = [image(20 + i) for i in range(4)]
    query = image(30)
    features = embed.embed([*demos, query])
    assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    expected = int(np.argmax(features[:4] @ features[4]))
    reply = knn.generate([conversation(["a", "b", "c", "d"], query_image=query, images=[20, 21, 22, 23])])
    assert reply == [["a", "b", "c", "d"][expected]]


def test_only_knn_icl_declares_its_replies_order_invariant_and_they_are(encoder_path: Path) -> None:
    knn = build_backend("knn_icl", encoder=encoder_path, device="cpu")
    assert knn.order_invariant
    assert not build_backend("majority").order_invariant and not build_backend("random").order_invariant
    for case in range(3):
        ids = [40 + 5 * case + i for i in range(4)]
        orders = list(itertools.permutations(range(4)))
        replies = knn.generate(
            [
                conversation(
                    [["a", "b", "c", "d"][i] for i in order],
                    query_image=image(90 + case),
                    images=[ids[i] for i in order],
                )
                for order in orders
            ]
        )
        assert len(set(replies)) == 1, replies
