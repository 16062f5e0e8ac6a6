"""SQLite store-and-forward: readings, outbox, small state."""
