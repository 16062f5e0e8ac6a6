"""Hardware-in-the-loop rig: simulated meters, platform simulator, fault proxy, scenarios."""
