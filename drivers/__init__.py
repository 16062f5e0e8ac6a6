"""Meter protocols behind one small interface (see drivers/base.py)."""
