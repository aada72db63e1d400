"""The web app served at ``GET /app``: plain ES modules and CSS in ``static/``, no build step.

``assets`` fingerprints those files at run time (content hashes in the file names, imports
rewritten to match) so browsers may cache them forever; ``companion_engine.routes.app``
serves them.
"""
