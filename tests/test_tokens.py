"""Token counting is exact (tiktoken's own ids) and never touches the network or tiktoken's loader."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load

from bot import tokens

# Ids from the official tiktoken 0.14.0 with OpenAI's downloaded vocabularies.
KNOWN = {
    "o200k_base": {
        "hello world": [24912, 2375],
        "<|endoftext|> is text here": [27, 91, 419, 1440, 919, 91, 29, 382, 2201, 2105],
        "Don't  stop\r\n\r\n  believing!!": [31559, 220, 5666, 1414, 220, 63514, 2618],
        "日本語のテキスト 🤖 emoji": [9048, 40909, 3385, 16056, 18368, 38236, 93643, 244, 74471],
        "    def f(x):\n        return x**2\n": [271, 1056, 285, 4061, 1883, 309, 622, 1215, 410, 17, 198],
        "1234567890": [7633, 19354, 29338, 15],
    },
    "cl100k_base": {
        "hello world": [15339, 1917],
        "<|endoftext|> is text here": [27, 91, 8862, 728, 428, 91, 29, 374, 1495, 1618],
        "Don't  stop\r\n\r\n  believing!!": [8161, 956, 220, 3009, 881, 220, 35090, 3001],
        "    def f(x):\n        return x**2\n": [262, 711, 282, 2120, 997, 286, 471, 865, 334, 17, 198],
        "1234567890": [4513, 10961, 16474, 15],
    },
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_ids(name: str) -> None:
    encoding = tokens.get_encoding(name)
    for text, ids in KNOWN[name].items():
        assert encoding.encode_ordinary(text) == ids, text
        assert encoding.decode(ids) == text


def test_special_tokens_are_tiktokens() -> None:
    assert tokens.get_encoding("o200k_base").encode_single_token("<|endoftext|>") == 199999
    assert tokens.get_encoding("cl100k_base").encode_single_token("<|endoftext|>") == 100257
    assert tokens.get_encoding("o200k_base").n_vocab == 200019


def test_models_map_to_their_encoding() -> None:
    o200k = ["gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-nano-2025-04-14", "gpt-5", "o4-mini"]
    o200k += ["ft:gpt-4o-mini-2024-07-18:acme:bot:abc123", "ft:gpt-4.1-2025-04-14:o::x:ckpt-step-9"]
    for model in o200k:
        assert tokens.encoding_name_for_model(model) == "o200k_base", model
    for model in ["gpt-3.5-turbo-0125", "gpt-4-0613", "ft:gpt-3.5-turbo-0125:acme::abc", "babbage-002"]:
        assert tokens.encoding_name_for_model(model) == "cl100k_base", model
    assert tokens.encoding_name_for_model("some-future-model") == "o200k_base"
    assert tokens.base_model("ft:gpt-4o-mini-2024-07-18:acme:bot:abc123") == "gpt-4o-mini-2024-07-18"


def test_loading_needs_no_network_and_not_tiktokens_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network or tiktoken's own loader used")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    monkeypatch.setattr(tiktoken.load, "load_tiktoken_bpe", refuse)
    tokens.get_encoding.cache_clear()
    try:
        assert tokens.get_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]
    finally:
        tokens.get_encoding.cache_clear()


def test_a_tampered_vocabulary_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:

    (tmp_path / "cl100k_base.tiktoken.gz").write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    monkeypatch.setattr(tokens, "VOCAB_DIR", tmp_path)
    tokens.get_encoding.cache_clear()
    try:
        with pytest.raises(tokens.VocabularyError, match="sha256"):
            tokens.get_encoding("cl100k_base")
    finally:
        tokens.get_encoding.cache_clear()


def test_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        tokens.get_encoding("r50k_base")
