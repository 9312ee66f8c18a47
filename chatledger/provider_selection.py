"""Which provider answers: an `api_client` given by the caller, or one named by
`model_config` (provider, model, base_url, ...). Provider modules are imported on demand so
that the vendor SDKs load only when used."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from chatledger.providers import Provider
from domain.errors import InvalidInput

PROVIDERS = ("offline", "openai", "anthropic")


def config_value(model_config: Any, *names: str) -> Any:
    for name in names:
        value = (
            model_config.get(name)
            if isinstance(model_config, dict)
            else getattr(model_config, name, None)
        )
        if value is not None:
            return value
    return None


def _base_url(value: Any) -> str | None:
    """A server URL, checked before an SDK parses it: the SDKs raise exceptions of their own
    for a malformed one, and take a relative one for a path of their default server."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"base_url must be a string, not {type(value).__name__}.")
    problem = None
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        problem = "it holds a control character or a lone surrogate"
    else:
        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as error:
            problem = str(error)
        else:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problem = "give an http:// or https:// URL with a host"
    if problem is not None:
        raise InvalidInput(f"base_url {value!r} is not a usable server URL: {problem}.")
    return value.strip()


def select_provider(model_config: Any, api_client: Any) -> Provider:
    if api_client is not None:
        if callable(getattr(api_client, "complete", None)):
            # Every call is recorded under the provider's name and model.
            if not all(isinstance(getattr(api_client, a, None), str) for a in ("name", "model")):
                raise InvalidInput(
                    "An api_client with complete(...) is a chatledger provider: it also needs "
                    "the text attributes name and model."
                )
            provider: Provider = api_client
            return provider
        if callable(getattr(api_client, "get_response", None)):
            from chatledger.penguin_client import PenguinClientProvider

            return PenguinClientProvider(api_client, config_value(model_config, "model") or "")
        raise InvalidInput(
            "api_client must have an async complete(...) (a chatledger provider) or Penguin's "
            "async get_response(messages, max_tokens, stream, stream_callback)."
        )
    name = str(config_value(model_config, "provider") or "offline").lower()
    model = config_value(model_config, "model")
    base_url = _base_url(config_value(model_config, "base_url", "api_base"))
    api_key = config_value(model_config, "api_key")
    if name == "offline":
        from infrastructure.offline_model import OfflineModel

        return OfflineModel()
    if not model:
        raise InvalidInput(f"model_config names provider {name!r} but no model.")
    if name == "openai":
        from infrastructure.providers.openai_provider import OpenAIProvider

        return OpenAIProvider(str(model), base_url=base_url, api_key=api_key)
    if name == "anthropic":
        from infrastructure.providers.anthropic_provider import AnthropicProvider

        return AnthropicProvider(str(model), base_url=base_url, api_key=api_key)
    raise InvalidInput(f"Unknown provider {name!r}; use one of {list(PROVIDERS)}.")
