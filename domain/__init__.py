"""The pure domain model of chatledger: events, the Conversation aggregate, value
objects and policies. Nothing here performs I/O or imports tiktoken, orjson or sqlite."""
