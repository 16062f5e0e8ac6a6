"""energy-agent: the access-end agent of the online energy-consumption monitoring system."""

__version__ = "0.1.0"
