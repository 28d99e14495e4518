"""Bundles ``configs/`` and ``checkpoints/`` into the wheel (as ``servegen_ml/_bundled/``).

Both stay at the top of the repository, where they are edited; an installed
package finds its copy through :mod:`servegen_ml.core.resources`. All other
metadata is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("configs", "checkpoints")


class BuildWithBundledData(build_py):
    def run(self):
        super().run()
        for name in BUNDLED:
            target = Path(self.build_lib) / "servegen_ml" / "_bundled" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.tmp"))


setup(cmdclass={"build_py": BuildWithBundledData})
