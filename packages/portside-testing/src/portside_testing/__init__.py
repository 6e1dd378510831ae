"""Pytest plugin and conformance suite for portside."""
