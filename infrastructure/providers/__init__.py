"""Model providers: the model port (port.py), the rules every adapter shares (common.py),
and the adapters that send chatledger's request to each vendor's API."""
