"""Read models rebuilt from the log. Each projection keeps its rows in the store's database
and records the last notification id it applied, in the same transaction as its rows, so it is
exactly-once and can be rebuilt from scratch at any time."""
