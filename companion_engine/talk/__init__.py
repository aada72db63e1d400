"""Talking to the companion: spoken messages over HTTP and the duplex WebSocket (``/api/ws``).

- ``transcription``: uploads and utterances through the profile's ``speech.stt``;
- ``listener``: one session's microphone, voice activity and the utterance it holds;
- ``playout``: one reply's audio sent at playback speed, stoppable at once;
- ``protocol``: every WebSocket message as a model (``docs/ws.md`` is generated from it);
- ``session``: one WebSocket session, turns and barge-in.
"""
