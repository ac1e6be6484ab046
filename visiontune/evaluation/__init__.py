"""Metrics (pure functions on arrays) and reports."""
