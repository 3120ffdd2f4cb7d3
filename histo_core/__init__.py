"""histo-retrain's library: data in, validation, split, training, evaluation, promotion, storage.

It never imports Prefect, so every step can be used from a notebook, the CLI, tests or
another orchestrator. Read the modules in the order a patch travels:
``data.sources`` -> ``data.manifest`` -> ``validation`` -> ``split`` -> ``data.cache`` ->
``data.dataset`` -> ``model`` -> ``train`` -> ``evaluate`` -> ``gate`` -> ``storage`` ->
``registry``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("histo-retrain")  # one statement of the version: pyproject.toml
except PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"
