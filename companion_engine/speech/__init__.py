"""Voice: streaming sentence splitting, speech cleaning, TTS engines and per-turn scheduling."""
