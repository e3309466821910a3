"""SPADE utilities."""
