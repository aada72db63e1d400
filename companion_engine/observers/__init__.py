"""Observers: built-in plugins that watch turns, reloads and refusals, off the data path.

Like Pipecat's observers they only read what already happened: the finished
``Turn`` (its ``result`` and its ``spans``) in ``turn_completed``, and the
``turn_started``, ``config_reloaded``, ``reload_failed`` and ``rate_limited`` hooks.
A turn never waits on them beyond one hook call at its start and end.
"""
