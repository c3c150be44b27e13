"""Build steps pyproject.toml cannot state (all configuration is there).

- The wheel carries the demo's dvc.yaml and params.yaml as ``trainwise/project_template/``:
  `trainwise init` derives a project's from them (components/project/init.py), so they never drift.
- With ``trainwise.components`` / ``trainwise.pipelines`` mapped to the repository's folders
  (``[tool.setuptools] package-dir``), every sub-package is listed from the folders themselves,
  so a package added later is never left out of the wheel.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TEMPLATE_FILES = ("dvc.yaml", "params.yaml")


class BuildPy(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads them from the checkout
            return
        target = Path(self.build_lib, "trainwise", "project_template")
        self.mkpath(str(target))
        for name in TEMPLATE_FILES:
            self.copy_file(str(ROOT / name), str(target / name))


kwargs = {}
if '"trainwise.components"' in (ROOT / "pyproject.toml").read_text():
    kwargs["packages"] = ["trainwise", *(f"trainwise.{p}" for p in find_packages(
        where=str(ROOT), include=["components", "components.*", "pipelines", "pipelines.*"]))]

setup(cmdclass={"build_py": BuildPy}, **kwargs)
