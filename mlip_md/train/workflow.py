"""Training and scoring from labelled structure files (what ``mlip-md train`` and ``mlip-md
evaluate`` run): read and split the data, train the ensemble with one progress bar per member,
score the model on held-out structures, write the JSON report; :func:`error_summary` is the
one-line text of an error report.

    data = read_training_data("train.extxyz", test="test.extxyz")
    report, report_path = train_from_data(data, "m.pt", ModelConfig(atomic_numbers=[]), TrainConfig())
    print(error_summary("test", report["test"]))
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import ase

from ..files import atomic_write_text
from ..model.io import load_potential
from ..model.potential import ModelConfig
from .data import read_structures, to_graph
from .fit import evaluate_errors
from .trainer import TrainConfig, split_train_val, train_ensemble

PathLike = Union[str, Path]
#: eV/Å³ -> GPa
GPA_PER_EV_PER_A3 = 160.21766


@dataclasses.dataclass
class TrainingData:
    """Labelled structures split for training: ``train`` and ``val`` (validation: early stopping,
    reported errors) and the optional held-out ``test``."""

    train: List[ase.Atoms]
    val: List[ase.Atoms]
    test: Optional[List[ase.Atoms]] = None

    @property
    def atomic_numbers(self) -> List[int]:
        """The sorted atomic numbers present in the training and validation structures."""
        return sorted({int(z) for a in self.train + self.val for z in a.numbers})


def read_training_data(data: PathLike, valid: Optional[PathLike] = None, test: Optional[PathLike] = None,
                       val_fraction: float = 0.1, seed: int = 0, drop_nonfinite: bool = False) -> TrainingData:
    """Read the labelled files (:func:`~.data.read_structures`); without ``valid``, a seeded
    ``val_fraction`` of ``data`` becomes the validation set."""
    frames = read_structures(data, drop_nonfinite=drop_nonfinite)
    val = read_structures(valid, drop_nonfinite=drop_nonfinite) if valid else None
    held_out = read_structures(test, drop_nonfinite=drop_nonfinite) if test else None
    if val is not None:
        return TrainingData(frames, val, held_out)
    train, val = split_train_val(frames, val_fraction, seed)
    return TrainingData(train, val, held_out)


def member_progress_bars(epochs: int, workers: int = 1):
    """(progress_factory for :func:`~.trainer.train_ensemble`, close): a tqdm bar per member with
    the validation force RMSE (eV/Å), energy RMSE (meV/atom) and learning rate of its last epoch;
    bars stack when members train in parallel. ``close()`` ends them."""
    from tqdm import tqdm

    bars = {}

    def factory(k: int, total: int):
        bar = tqdm(total=epochs, desc=f"member {k + 1}/{total}", position=k if workers > 1 else 0, leave=True,
                   dynamic_ncols=True)
        bars[k] = bar

        def update(record: dict) -> None:
            bar.n = record["epoch"]
            bar.set_postfix(F=f"{record['val_force_rmse']:.4f}", E=f"{record['val_energy_rmse_per_atom'] * 1e3:.2f}meV",
                            lr=f"{record['lr']:.1e}", refresh=False)
            bar.refresh()

        return update

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return factory, close


def train_from_data(data: TrainingData, output: PathLike, model_config: ModelConfig, config: TrainConfig, *,
                    checkpoint: Optional[PathLike] = None, resume: bool = False, report: Optional[PathLike] = None,
                    reference: str = "unknown", init: Optional[PathLike] = None, workers: int = 1,
                    progress: bool = True, echo: Callable[[str], None] = print) -> Tuple[dict, Path]:
    """Train on ``data`` (:func:`~.trainer.train_ensemble`), write the model to ``output`` and
    the JSON report (with ``report["test"]``, the errors on ``data.test`` when given) to
    ``report`` (default: ``output`` with suffix .json). ``model_config.atomic_numbers`` is
    replaced by the elements of the data; checkpoints go to ``checkpoint`` (default
    OUTPUT.ckpt, continued with ``resume``); ``init``: warm start from that model's weights.
    ``echo`` gets one line before training starts. Returns (report, report path)."""
    output = Path(output)
    model_config = dataclasses.replace(model_config, atomic_numbers=data.atomic_numbers)
    checkpoint = Path(checkpoint) if checkpoint else output.with_suffix(output.suffix + ".ckpt")
    init_from = load_potential(init) if init else None
    factory, close_bars = member_progress_bars(config.epochs, workers) if progress else (None, lambda: None)
    members = model_config.ensemble_size
    echo(f"training {members} member{'s' if members != 1 else ''} on {len(data.train)} structures (validation "
         f"{len(data.val)}), elements {model_config.atomic_numbers}, checkpoints in {checkpoint}")
    try:
        result = train_ensemble(
            data.train, data.val, model_config, config, output,
            checkpoint_dir=checkpoint, resume=resume, progress_factory=factory, reference=reference,
            init_from=init_from, workers=workers,
        )
    finally:
        close_bars()
    if data.test is not None:
        result["test"] = evaluate_errors(load_potential(output), [to_graph(a, model_config.cutoff) for a in data.test])
    report_path = Path(report) if report else output.with_suffix(".json")
    atomic_write_text(report_path, json.dumps(result, indent=1))
    return result, report_path


def evaluate_structures(model: PathLike, frames: Sequence[ase.Atoms]) -> dict:
    """Errors of the model file ``model`` on labelled ``frames`` (:func:`~.fit.evaluate_errors`)."""
    module = load_potential(model)
    return evaluate_errors(module, [to_graph(a, module.cutoff) for a in frames])


def error_summary(name: str, errors: dict) -> str:
    """One line of an :func:`~.fit.evaluate_errors` report: the ensemble mean's energy RMSE and
    MAE (meV/atom), force RMSE and MAE (eV/Å), stress RMSE (GPa) when labelled, and the count."""
    m = errors["mean"]
    return (f"{name}: energy RMSE {m['energy_rmse_per_atom'] * 1e3:.2f} meV/atom, "
            f"MAE {m['energy_mae_per_atom'] * 1e3:.2f}; force RMSE {m['force_rmse']:.4f} eV/Å, MAE {m['force_mae']:.4f}"
            + (f"; stress RMSE {m['stress_rmse'] * GPA_PER_EV_PER_A3:.3f} GPa" if "stress_rmse" in m else "")
            + f" ({errors['n_structures']} structures)")
