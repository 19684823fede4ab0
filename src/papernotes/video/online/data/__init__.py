"""Feature streams: extraction, THUMOS-style sessions, the synthetic streams."""
