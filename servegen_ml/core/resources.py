"""Where the configs and the shipped checkpoints are: inside an installed wheel, or beside the package.

A wheel carries both under ``servegen_ml/_bundled/`` (``setup.py`` copies them
at build time); a source checkout (editable install) keeps them at the top of
the repository, which stays the one place they are edited.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
BUNDLED_DIR = PACKAGE_DIR / "_bundled"


def resource_dir(name: str) -> Path:
    """``configs`` or ``checkpoints``: the wheel's copy, else the checkout's (the wheel's path if neither exists)."""
    for root in (BUNDLED_DIR, PACKAGE_DIR.parent):
        if (root / name).is_dir():
            return root / name
    return BUNDLED_DIR / name
