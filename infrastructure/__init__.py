"""Adapters: the event store, serialisation, hashing checks, tokenizers, model providers and
file access. Everything with I/O lives here or in projections/."""
