"""Wire format v1: envelopes, their canonical form, signing and sealing (docs/protocol.md)."""
