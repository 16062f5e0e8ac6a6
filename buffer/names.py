"""Names the store and its users share: destinations and cursors, each defined once."""

# The MQTT destination's name in the store's delivery table (the only one until destinations
# become a configured list).
MQTT = "mqtt"

# cursors(name, value)
SEALED_CURSOR = "sealed_rowid"  # last polls.id the sealer has put into an envelope
SUMMARISED_CURSOR = "summarised_ts"  # accounting will not read a reading older than this ms
INDEXED_CURSOR = "indexed_poll_id"  # last polls.id entered in poll_index
