"""Fixtures for the MLLM tests: a local chat-completions server on a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mllm.chat_server import ChatServer


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    """A running `ChatServer` (see tests/mllm/chat_server.py), shut down after the test."""
    server = ChatServer()
    try:
        yield server
    finally:
        server.close()
