"""Provider-aware token counting: text, chat overhead, images, context windows."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from PIL import Image

from domain.errors import FileInputError, InvalidInput
from infrastructure import token_counting as tc
from infrastructure.token_counting import (
    CONTEXT_WINDOWS,
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_ENCODING,
    ModelTokenizer,
    TokenCountingWarning,
    context_window_for,
    image_dimensions,
    tokenizer_for,
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # An empty tiktoken cache: o200k_base is never "available", whatever this machine has.
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tc._reset_caches()
    yield
    tc._reset_caches()


# -- text -----------------------------------------------------------------------------------
def test_default_tokenizer_is_exact_cl100k() -> None:
    tok = tokenizer_for(None)
    assert tok.encoding_name == DEFAULT_ENCODING
    assert tok.exact is True
    assert tok.provider == "openai"
    assert tok.describe() == {
        "model": None,
        "provider": "openai",
        "encoding": DEFAULT_ENCODING,
        "exact": True,
        "multiplier": 1.0,
    }


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("hello world", 2), ("Hello, world!", 4), ("tiktoken is great!", 6), ("", 0)],
)
def test_exact_cl100k_counts(text: str, tokens: int) -> None:
    assert tokenizer_for(None).count_text(text) == tokens
    assert tokenizer_for("gpt-4").count_text(text) == tokens


def test_special_token_text_is_counted_not_rejected() -> None:
    assert tokenizer_for(None).count_text("<|endoftext|>") > 1


def test_cl100k_models_are_exact_offline() -> None:
    for model in ("gpt-4", "gpt-4-turbo", "gpt-3.5-turbo-0125", "text-embedding-3-small"):
        tok = tokenizer_for(model)
        assert (tok.encoding_name, tok.exact, tok.provider) == (DEFAULT_ENCODING, True, "openai")


def test_o200k_model_without_cached_encoding_is_an_estimate() -> None:
    tok = tokenizer_for("gpt-4o-2024-08-06")
    assert tok.encoding_name == DEFAULT_ENCODING
    assert tok.exact is False
    assert tok.provider == "openai"
    assert tok.multiplier == 1.0
    assert tok.count_text("hello world") == 2
    assert tok.describe()["exact"] is False


def test_o200k_model_with_cached_encoding_uses_it(tmp_path: Path) -> None:
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    cache = tmp_path / "tiktoken-cache"
    (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"placeholder")
    tok = tokenizer_for("gpt-4o")
    assert (tok.encoding_name, tok.exact, tok.provider) == ("o200k_base", True, "openai")


def test_unloadable_encoding_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    real = tc._load_encoding

    def load(name: str) -> tiktoken.Encoding:
        if name == "o200k_base":
            raise ValueError("corrupt cache")
        return real(name)

    monkeypatch.setattr(tc, "_load_encoding", load)
    tok = ModelTokenizer("o200k_base", True, 3, 3, "openai", model="gpt-4o")
    with pytest.warns(TokenCountingWarning, match="o200k_base"):
        assert tok.count_text("hello world") == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok.count_text("hello world") == 2  # no second attempt, no second warning


def test_anthropic_is_a_conservative_estimate() -> None:
    tok = tokenizer_for("claude-3-5-sonnet-20241022")
    assert tok.provider == "anthropic"
    assert tok.exact is False
    assert tok.multiplier == 1.25
    assert tok.count_text("hello world") == math.ceil(2 * 1.25)
    text = "The quick brown fox jumps over the lazy dog. " * 20
    base = tokenizer_for(None).count_text(text)
    assert tok.count_text(text) == math.ceil(base * 1.25)
    assert tok.describe()["provider"] == "anthropic"


def test_provider_hint_and_routing_prefixes() -> None:
    assert tokenizer_for("my-proxy-model", provider="anthropic").provider == "anthropic"
    assert tokenizer_for("anthropic.claude-3-haiku-20240307-v1:0").provider == "anthropic"
    assert tokenizer_for("openai/gpt-4").exact is True


def test_known_open_model_is_estimated_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = tokenizer_for("llama3:8b")
    assert (tok.provider, tok.exact, tok.multiplier) == ("other", False, 1.25)


def test_unknown_model_warns_once_and_falls_back() -> None:
    with pytest.warns(TokenCountingWarning, match="totally-new-model"):
        tok = tokenizer_for("totally-new-model")
    assert (tok.encoding_name, tok.exact, tok.provider) == (DEFAULT_ENCODING, False, "other")
    assert tok.count_text("hello world") == 3
    tokenizer_for.cache_clear()  # even a rebuilt tokenizer does not warn again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer_for("totally-new-model")


def test_unknown_openai_model_keeps_openai_overheads() -> None:
    with pytest.warns(TokenCountingWarning):
        tok = tokenizer_for("gpt-99-ultra", provider="openai")
    assert (tok.provider, tok.exact, tok.per_message_overhead) == ("openai", False, 3)


def test_tokenizers_are_cached() -> None:
    assert tokenizer_for("gpt-4o") is tokenizer_for("gpt-4o")


# -- laziness -------------------------------------------------------------------------------
def test_building_tokenizers_loads_no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_get = tiktoken.get_encoding

    def spy(name: str) -> tiktoken.Encoding:
        calls.append(name)
        return real_get(name)

    monkeypatch.setattr(tiktoken, "get_encoding", spy)
    tc._load_encoding.cache_clear()
    for model in (None, "gpt-4o", "gpt-4", "claude-sonnet-4", "llama3"):
        tokenizer_for(model)
    assert calls == []
    assert tc._load_encoding.cache_info().currsize == 0

    tokenizer_for("gpt-4o").count_text("first count loads")
    tokenizer_for("claude-sonnet-4").count_text("second count reuses")
    assert calls == [DEFAULT_ENCODING]
    assert tc._load_encoding.cache_info().currsize == 1


def test_one_encode_call_per_text(monkeypatch: pytest.MonkeyPatch) -> None:
    encode_calls: list[dict[str, Any]] = []

    class FakeEncoding:
        def encode(self, text: str, **kwargs: Any) -> list[int]:
            encode_calls.append(kwargs)
            return [0] * len(text.split())

    monkeypatch.setattr(tc, "_load_encoding", lambda name: FakeEncoding())
    assert tokenizer_for(None).count_text("one two three") == 3
    assert tokenizer_for("claude-3-haiku").count_text("one two three four") == 5
    assert encode_calls == [{"disallowed_special": ()}, {"disallowed_special": ()}]


# -- chat overhead --------------------------------------------------------------------------
def test_openai_message_overhead_arithmetic() -> None:
    tok = tokenizer_for("gpt-4")
    assert (tok.per_message_overhead, tok.reply_overhead) == (3, 3)
    hello = tok.count_text("hello world")
    # 3 per message + 1 for the encoded role + the content.
    assert tok.count_message("user", hello) == 2 + 3 + 1
    assert tok.count_message("system", 0) == 4
    messages = [("system", tok.count_text("You are terse.")), ("user", hello)]
    expected = sum(n + 3 + 1 for _, n in messages) + 3
    assert tok.count_conversation(messages) == expected


def test_generic_message_overhead() -> None:
    tok = tokenizer_for("claude-3-7-sonnet-latest")
    assert (tok.per_message_overhead, tok.reply_overhead) == (5, 4)
    assert tok.count_message("user", 10) == 15
    assert tok.count_conversation([("user", 10), ("assistant", 7)]) == 15 + 12 + 4


def test_negative_text_tokens_rejected() -> None:
    with pytest.raises(InvalidInput):
        tokenizer_for(None).count_message("user", -1)


# -- images ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "height", "detail", "tokens"),
    [
        (1024, 1024, "high", 765),  # OpenAI docs: 768x768 -> 4 tiles
        (2048, 4096, "high", 1105),  # OpenAI docs: 1024x2048 -> 768x1536 -> 6 tiles
        (4096, 8192, "low", 85),  # OpenAI docs: low detail is flat
        (1, 1, "low", 85),
        (512, 512, "high", 255),  # 1 tile, never upscaled
        (513, 500, "high", 425),  # 2 tiles
        (1024, 1024, "auto", 765),  # auto counted as high
    ],
)
def test_openai_image_formula(width: int, height: int, detail: str, tokens: int) -> None:
    assert tokenizer_for("gpt-4o").count_image(width, height, detail) == tokens


def test_other_provider_uses_openai_image_formula() -> None:
    assert tokenizer_for("llama3").count_image(2048, 4096, "high") == 1105
    assert tokenizer_for(None).count_image(1024, 1024) == 765


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        (1000, 1000, 1334),  # Anthropic docs: ~1334
        (200, 200, 54),  # Anthropic docs: ~54
        (1092, 1092, 1590),  # Anthropic docs: the 1:1 maximum, ~1590, not resized
    ],
)
def test_anthropic_image_formula(width: int, height: int, tokens: int) -> None:
    tok = tokenizer_for("claude-sonnet-4-20250514")
    assert tok.count_image(width, height) == tokens
    assert tok.count_image(width, height, "low") == tokens  # detail is an OpenAI notion


def test_anthropic_large_image_is_resized_before_counting() -> None:
    tok = tokenizer_for("claude-opus-4-1")
    tokens = tok.count_image(4000, 3000)
    # Long edge to 1568 -> 1568x1176 (1.84 MP), then down to 1.2 MP -> 1264x948.
    assert tokens == math.ceil(1264 * 948 / 750) == 1598
    assert tokens < math.ceil(4000 * 3000 / 750)
    assert tok.count_image(3000, 4000) == tokens
    # A long, thin image is bounded by the 1568 px edge only.
    assert tok.count_image(3136, 200) == math.ceil(1568 * 100 / 750)


def test_bad_image_arguments() -> None:
    tok = tokenizer_for("gpt-4o")
    with pytest.raises(InvalidInput):
        tok.count_image(0, 10)
    with pytest.raises(InvalidInput):
        tok.count_image(10, 10, "ultra")


def test_image_dimensions_of_a_png(tmp_path: Path) -> None:
    path = tmp_path / "pic.png"
    Image.new("RGB", (321, 123), "red").save(path)
    assert image_dimensions(path) == (321, 123)
    assert image_dimensions(str(path)) == (321, 123)


def test_image_dimensions_of_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image at all\n")
    with pytest.raises(FileInputError, match="not an image"):
        image_dimensions(path)


def test_image_dimensions_of_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileInputError, match="not found"):
        image_dimensions(tmp_path / "missing.jpg")
    with pytest.raises(FileInputError, match="not a file"):
        image_dimensions(tmp_path)


def test_file_input_error_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        image_dimensions(tmp_path / "missing.jpg")


# -- context windows ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("gpt-4.1", 1_047_576),
        ("gpt-4.1-mini", 1_047_576),
        ("gpt-4-turbo-2024-04-09", 128_000),
        ("gpt-4-0613", 8_192),
        ("gpt-3.5-turbo-0125", 16_385),
        ("o1", 200_000),
        ("o1-mini", 128_000),
        ("o3-mini-2025-01-31", 200_000),
        ("o4-mini", 200_000),
        ("claude-3-5-sonnet-20241022", 200_000),
        ("claude-3-7-sonnet-latest", 200_000),
        ("claude-sonnet-4-20250514", 200_000),
        ("claude-opus-4-1", 200_000),
        ("claude-3-haiku-20240307", 200_000),
        ("claude-2.0", 100_000),
        ("llama3", 8_192),
        ("llama3:8b", 8_192),
        ("llama3.1:70b", 131_072),
        ("GPT-4o", 128_000),
        ("openai/gpt-4o", 128_000),
        ("offline", DEFAULT_CONTEXT_WINDOW),
    ],
)
def test_context_window_prefix_matching(model: str, window: int) -> None:
    assert context_window_for(model) == window


def test_longest_prefix_wins() -> None:
    assert CONTEXT_WINDOWS["gpt-4"] != CONTEXT_WINDOWS["gpt-4-turbo"]
    assert context_window_for("gpt-4-turbo-preview") == CONTEXT_WINDOWS["gpt-4-turbo"]
    assert context_window_for("gpt-4-32k-0613") == CONTEXT_WINDOWS["gpt-4-32k"]


def test_prefix_must_end_at_a_name_boundary() -> None:
    with pytest.warns(TokenCountingWarning):
        assert context_window_for("gpt-4omega") == DEFAULT_CONTEXT_WINDOW


def test_override_wins() -> None:
    assert context_window_for("gpt-4", override=50_000) == 50_000
    assert context_window_for("no-such-model", override=1_000) == 1_000
    assert context_window_for(None, override=2_000) == 2_000
    with pytest.raises(InvalidInput):
        context_window_for("gpt-4", override=0)


def test_no_model_is_the_default_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert context_window_for(None) == DEFAULT_CONTEXT_WINDOW == 128_000


def test_unknown_model_window_warns_once() -> None:
    with pytest.warns(TokenCountingWarning, match="mystery-llm"):
        assert context_window_for("mystery-llm") == DEFAULT_CONTEXT_WINDOW
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert context_window_for("mystery-llm") == DEFAULT_CONTEXT_WINDOW
