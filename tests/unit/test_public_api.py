"""What `import chatledger` promises: every exception it exports is a ChatledgerError, so one
`except chatledger.ChatledgerError` catches whatever chatledger raises on purpose."""

import chatledger


def test_every_exported_exception_is_a_chatledger_error() -> None:
    exported = [getattr(chatledger, name) for name in chatledger.__all__]
    exceptions = [
        item for item in exported if isinstance(item, type) and issubclass(item, Exception)
    ]
    assert chatledger.ProviderError in exceptions
    assert all(issubclass(error, chatledger.ChatledgerError) for error in exceptions)
