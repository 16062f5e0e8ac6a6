"""`energy-agent serve`: the energy manager's local web page and its JSON endpoints.

A process of its own (never inside the polling daemon): it reads the store read-only and opens
it for writing only for the two actions, a manual entry and a resend. Imported only by
agent/commands/serve.py, so the daemon never loads the web stack.
"""
