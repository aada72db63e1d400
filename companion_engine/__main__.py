"""``python -m companion_engine`` is the ``companion`` CLI."""

from companion_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
