"""liveclass part."""
