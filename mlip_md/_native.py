"""The compiled C++ core (``mlip_md._core``, built from ``csrc/`` by setup.py), with a clear
error when it is missing."""
from __future__ import annotations

from pathlib import Path

try:
    from mlip_md import _core as core
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        f"mlip_md's compiled core (_core) is missing in {Path(__file__).resolve().parent}: most likely a "
        "source checkout is shadowing the installed package (`python -m ...` and `python -c ...` put the "
        "current directory first on sys.path). Run from another directory, use the `mlip-md` command, "
        "or build in place with `pip install -e .`"
    ) from exc

__all__ = ["core"]
