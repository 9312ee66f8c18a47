"""Model providers: adapters from chatledger's request to each vendor's API."""
