"""Delivery: the forwarder and one module per destination kind."""
