"""Chat turns: the request model, turn assembly, the runner and its SSE events."""
