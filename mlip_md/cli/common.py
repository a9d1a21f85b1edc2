"""Argument types and options several ``mlip-md`` commands share, and the warning lines of
``--drop-nonfinite``. argparse types raise ArgumentTypeError (exit 2 with the usage line)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys


def threads(text: str) -> int:
    """--threads: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads takes a whole number >= 1, got {text!r}")
    return value


def add_threads(p) -> None:
    p.add_argument("--threads", type=threads, default=None,
                   help="torch threads per process (default: OMP_NUM_THREADS if set, else 1: right for MPI ranks "
                   "and busy machines; more can help large cells on an idle machine)")


def seconds(text: str) -> float:
    """A finite number of seconds >= 0 (0: no limit)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"takes a number of seconds >= 0 (0: no limit), got {text!r}")
    return value


def monitor_rule(text: str):
    """--monitor SIGNAL:THRESHOLD:ACTION[,ACTION] -> :class:`mlip_md.runtime.monitors.Rule`."""
    from ..runtime.monitors import Rule

    try:
        signal, threshold, actions = text.split(":")
        return Rule(signal, float(threshold), tuple(a for a in actions.split(",") if a))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--monitor takes SIGNAL:THRESHOLD:ACTION[,ACTION], e.g. mahalanobis:500:warn,dump ({exc})"
        )


def add_drop_nonfinite(p) -> None:
    p.add_argument("--drop-nonfinite", action="store_true",
                   help="leave out structures with NaN/inf energy, forces or stress (one warning lists them; "
                   "default: refuse the data, naming them)")


@contextlib.contextmanager
def label_warnings(command: str):
    """Print the NonFiniteLabelsWarning of --drop-nonfinite as 'mlip-md COMMAND: warning: ...'
    lines when the block ends; other warnings are shown as usual."""
    import warnings

    from ..errors import NonFiniteLabelsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteLabelsWarning)
        yield
    for item in caught:
        if issubclass(item.category, NonFiniteLabelsWarning):
            print(f"mlip-md {command}: warning: {item.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def options_from(cls, args: argparse.Namespace):
    """The dataclass ``cls`` filled from the parsed arguments of the same names (every field of
    ``cls`` is an option of the command)."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})
