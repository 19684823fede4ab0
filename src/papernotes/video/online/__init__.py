"""Online action detection: feature streams, detectors and exact frame-by-frame streaming."""
