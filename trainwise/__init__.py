"""trainwise: a deep-learning training pipeline (DVC runs the DAG, Ray trains and tunes, MLflow records).

The one import package an install claims. ``trainwise.components`` and ``trainwise.pipelines`` are
the repository's ``components/`` and ``pipelines/`` folders, mapped by ``package-dir`` in
pyproject.toml (setup.py lists their sub-packages); a wheel holds them under ``trainwise/``.
"""

import os as _os

__version__ = "0.1.0"

# A checkout used without installing it (PYTHONPATH=<repo>, `python -m` from the repo root, a Ray job
# whose working_dir is the repo), or an editable install whose finder does not map the nested
# packages: find components/ and pipelines/ beside this folder. Only in a trainwise checkout
# (components/ and pyproject.toml next to it), never in an installed wheel.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (_os.path.isdir(_os.path.join(_root, "components")) and _os.path.isfile(_os.path.join(_root, "pyproject.toml"))
        and _root not in __path__):
    __path__.append(_root)
