"""The repository's user-editable files (companion.yaml, profiles/, characters/) as committed.

The README tells users to edit these files; a test that asserts what they hold must read
the committed version (``git show HEAD:path``), never the working copy, or ``make test``
fails after an ordinary edit. Outside a git checkout (a release archive) there is no
committed version: ``committed`` returns None and value checks are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def committed(relpath: str) -> bytes | None:
    """``relpath`` as committed at ``HEAD``, or None (no git, not a checkout, not tracked)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        out = subprocess.run([git, "-C", str(REPO), "show", f"HEAD:{relpath}"],
                             capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def shipped_copy(relpath: str, dest: Path) -> Path:
    """Write the shipped ``relpath`` to ``dest``: the committed version when there is one,
    else the working copy (a release archive has nothing else)."""
    data = committed(relpath)
    dest.write_bytes(data if data is not None else (REPO / relpath).read_bytes())
    return dest
