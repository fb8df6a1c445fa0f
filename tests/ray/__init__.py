"""Tests that start a real Ray (one local Ray per module, or `ray start` nodes)."""
