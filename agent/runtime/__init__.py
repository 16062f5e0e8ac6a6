"""The daemon at run time: wiring, polling, batching commits, watchdog, heartbeat, systemd notify."""
