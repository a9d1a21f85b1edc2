"""Bringing a model file written by an older mlip_md up to this version (``mlip-md upgrade``):
:func:`~.io.reexport` to a new file, and what the new file has that the old one lacked."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Tuple, Union

from ..runtime.model_info import ModelInfo
from .io import read_metadata, reexport

#: the metadata blocks older files may lack (ModelInfo attributes, None when absent)
UPGRADE_BLOCKS = ("descriptor", "repulsion")


@dataclasses.dataclass(frozen=True)
class Upgrade:
    """The written file, its ModelInfo, and the blocks of :data:`UPGRADE_BLOCKS` it gained."""

    path: Path
    info: ModelInfo
    added: Tuple[str, ...]


def upgrade_model(model: Union[str, Path], output: Union[str, Path], repulsion: Optional[bool] = True) -> Upgrade:
    """Re-export ``model`` to ``output`` with this version (weights, statistics, calibration and
    metadata kept; ``repulsion`` as in :func:`~.io.reexport`). ValueError when ``output`` is
    the input file (the upgraded model goes to a new file)."""
    model, output = Path(model), Path(output)
    if output.resolve() == model.resolve():
        raise ValueError(f"--output {output} is the input file; write the upgraded model to a new file")
    before = ModelInfo.from_metadata(read_metadata(model), model)
    path = reexport(model, output, repulsion=repulsion)
    after = ModelInfo.from_metadata(read_metadata(path), path)
    added = tuple(block for block in UPGRADE_BLOCKS
                  if getattr(after, block) is not None and getattr(before, block) is None)
    return Upgrade(path, after, added)
