"""Video understanding: action recognition and online action detection."""
