"""Downstream tasks generated procedurally (no downloads)."""
