"""Ensemble training: K members trained independently (own initialisation and data order),
then packed into one model evaluated in a single batched pass.

Every epoch of every member is checkpointed atomically, so an interrupted run resumes where
it stopped (``resume=True``) and gives the same result as an uninterrupted one. Checkpoints hold
tensors and plain data only (dicts, lists, numbers, strings) and are loaded as data
(``torch.load(..., weights_only=True)``): a checkpoint that would build other objects is refused.

A member whose loss turns non-finite stops (its best finite epoch is kept); a member with no
finite epoch, or a trained model with non-finite validation errors, raises TrainingError and
writes no model (the checkpoints stay for inspection).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import ase
import numpy as np
import torch

from ..files import atomic_path, atomic_write_text
from ..errors import CheckpointError, TrainingError
from ..model.io import save_model
from ..model.potential import MONITOR_BUFFERS, MLIPotential, ModelConfig
from ..uq.bll import fit_last_layer_posterior
from .data import LabelledGraph, check_frames, collate, dataset_hash, to_graph
from ..model.descriptor import default_channels
from .fit import evaluate_errors, fit_domain_statistics, fit_normalisation, fit_radial_mixing
from .loss import LossWeights, loss_terms, predict_batch, weighted_loss

TRAIN_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings (model hyper-parameters live in ModelConfig)."""

    epochs: int = 200
    batch_size: int = 8
    learning_rate: float = 5e-3
    min_learning_rate: float = 1e-5
    lr_factor: float = 0.5
    lr_patience: int = 8
    patience: int = 25  # early stopping: epochs without validation improvement
    val_fraction: float = 0.1
    seed: int = 0
    weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    dtype: str = "float32"  # training precision
    export_dtype: str = "float64"
    device: str = "cpu"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _same_run(previous: dict, current: dict) -> bool:
    """Settings match: every setting recorded in the checkpoint equals the current one (settings
    added by a newer mlip_md, absent from an older checkpoint, are accepted)."""
    for key, value in previous.items():
        if key not in current:
            return False
        if isinstance(value, dict) and isinstance(current[key], dict):
            if not _same_run(value, current[key]):
                return False
        elif value != current[key]:
            return False
    return True


def split_train_val(frames: Sequence[ase.Atoms], val_fraction: float, seed: int):
    """Random split with a fixed seed; at least one validation frame when possible."""
    n = len(frames)
    if n < 2:
        raise ValueError(f"need at least 2 labelled structures to train (got {n})")
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    val = [frames[i] for i in sorted(order[:n_val])]
    train = [frames[i] for i in sorted(order[n_val:])]
    return train, val


#: what a member checkpoint holds (MemberTrainer.state)
CHECKPOINT_KEYS = ("epoch", "readout", "optimizer", "scheduler", "best_val", "best_state", "bad_epochs", "history",
                   "done")


def _checkpoint_fix(path: Path) -> str:
    return (f"delete {path} (that member then restarts from epoch 0) and run the same command with --resume, "
            f"or delete {path.parent} and start without --resume")


def load_checkpoint(path: Path) -> dict:
    """A member checkpoint as plain data (tensors, dicts, lists, numbers, strings).

    Loaded with ``weights_only=True``: a pickle that would build any other object (and could run
    code while doing so) is refused with :class:`CheckpointError`, as is a truncated or corrupt
    file or one without the keys of :data:`CHECKPOINT_KEYS`; every message names the file and
    what to do."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data{what}: refused, as loading it "
            f"could run code (mlip_md never writes such checkpoints); {_checkpoint_fix(path)}") from None
    except Exception as exc:  # truncated zip: OSError / RuntimeError from torch's reader
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt: {type(exc).__name__}: {first}); "
            f"{_checkpoint_fix(path)}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an mlip_md member checkpoint (no {', '.join(missing)}); "
                              f"{_checkpoint_fix(path)}")
    return state


class MemberTrainer:
    """Trains one ensemble member (a K = 1 MLIPotential) with Adam, a plateau LR schedule,
    early stopping, and a per-epoch checkpoint."""

    def __init__(
        self,
        member: MLIPotential,
        train: Sequence[LabelledGraph],
        val: Sequence[LabelledGraph],
        config: TrainConfig,
        member_index: int,
        checkpoint: Optional[Path],
    ):
        self.config = config
        self.dtype = TRAIN_DTYPES[config.dtype]
        self.model = member.to(self.dtype)
        self.train_graphs = list(train)
        self.val_batches = [
            collate(list(val[s : s + config.batch_size])).to(self.dtype, config.device)
            for s in range(0, len(val), config.batch_size)
        ]
        self.member_index = member_index
        self.checkpoint = checkpoint
        self.parameters = list(self.model.readout.parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=config.lr_factor, patience=config.lr_patience
        )
        self.epoch = 0
        self.best_val = math.inf
        self.best_state = copy.deepcopy(self.model.readout.state_dict())
        self.bad_epochs = 0
        self.history: List[dict] = []
        self.done = False

    # -------------------------------------------------------------- checkpoint
    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "readout": self.model.readout.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_val": self.best_val,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "done": self.done,
        }

    def save(self) -> None:
        if self.checkpoint is None:
            return
        with atomic_path(self.checkpoint) as tmp:
            torch.save(self.state(), tmp)

    def restore(self) -> bool:
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        state = load_checkpoint(self.checkpoint)
        try:
            self.model.readout.load_state_dict(state["readout"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch = int(state["epoch"])
            self.best_val = float(state["best_val"])
            self.best_state = state["best_state"]
            shapes = {name: tuple(t.shape) for name, t in self.model.readout.state_dict().items()}
            if {name: tuple(t.shape) for name, t in self.best_state.items()} != shapes:
                raise ValueError("its best_state does not match the readout's parameters")
            self.bad_epochs = int(state["bad_epochs"])
            self.history = list(state["history"])
            self.done = bool(state["done"])
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {self.checkpoint} does not fit this model ({first}); "
                                  f"{_checkpoint_fix(self.checkpoint)}") from None
        return True

    # -------------------------------------------------------------- training
    def _epoch_order(self) -> np.ndarray:
        # depends only on (seed, member, epoch): a resumed run sees the same batches
        rng = np.random.default_rng([self.config.seed, self.member_index, self.epoch])
        return rng.permutation(len(self.train_graphs))

    def train_epoch(self) -> float:
        self.model.train()
        order = self._epoch_order()
        total, count = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            chunk = [self.train_graphs[i] for i in order[start : start + self.config.batch_size]]
            batch = collate(chunk).to(self.dtype, self.config.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = weighted_loss(loss_terms(predict_batch(self.model, batch), batch), self.config.weights)
            # only the weights: skips the second-order terms with respect to the geometry
            loss.backward(inputs=self.parameters)
            self.optimizer.step()
            total += float(loss.detach()) * len(chunk)
            count += len(chunk)
        return total / max(count, 1)

    def validate(self) -> Dict[str, float]:
        self.model.eval()  # edge gradients without a graph: no second-order work
        sums = {"energy": 0.0, "forces": 0.0, "stress": 0.0, "loss": 0.0}
        n = 0
        for batch in self.val_batches:
            with torch.enable_grad():
                terms = loss_terms(predict_batch(self.model, batch), batch)
            b = batch.n_structures
            for key in ("energy", "forces", "stress"):
                sums[key] += float(terms[key]) * b
            sums["loss"] += float(weighted_loss(terms, self.config.weights)) * b
            n += b
        return {
            "loss": sums["loss"] / n,
            "energy_rmse_per_atom": math.sqrt(sums["energy"] / n),
            "force_rmse": math.sqrt(sums["forces"] / n),
        }

    def run(self, progress: Optional[Callable[[dict], None]] = None) -> MLIPotential:
        cfg = self.config
        while not self.done:
            if self.epoch >= cfg.epochs:
                self.done = True
                break
            start = time.perf_counter()
            train_loss = self.train_epoch()
            metrics = self.validate()
            self.epoch += 1
            self.scheduler.step(metrics["loss"])
            lr = self.optimizer.param_groups[0]["lr"]
            if metrics["loss"] < self.best_val:
                self.best_val = metrics["loss"]
                self.best_state = copy.deepcopy(self.model.readout.state_dict())
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            record = {"epoch": self.epoch, "train_loss": train_loss, "lr": lr,
                      "seconds": time.perf_counter() - start, **{f"val_{k}": v for k, v in metrics.items()}}
            self.history.append(record)
            if self.bad_epochs >= cfg.patience or lr < cfg.min_learning_rate:
                self.done = True
            if not (math.isfinite(train_loss) and math.isfinite(metrics["loss"])):
                self.done = True  # diverged: the weights are no longer usable; best_state keeps the best epoch
            self.save()
            if progress is not None:
                progress(record)
        self.model.readout.load_state_dict(self.best_state)
        return self.model


def resolve_model_channels(config: ModelConfig, init_from: Optional[MLIPotential] = None) -> ModelConfig:
    """``config`` with an explicit ``channels``: as given, else the warm start's, else the
    default rule (:func:`mlip_md.model.descriptor.default_channels`). Stored in the model file,
    so the file rebuilds with the same descriptor whatever a later default is."""
    if config.channels is not None:
        return config
    if init_from is not None:
        channels = int(init_from.descriptor.n_channels)
    else:
        channels = default_channels(len(config.atomic_numbers), config.n_max)
    return dataclasses.replace(config, channels=channels)


def shared_member_state(ensemble: MLIPotential) -> Dict[str, torch.Tensor]:
    """What every member starts from: the ensemble's non-readout buffers (normalisation,
    descriptor), without the domain monitors' statistics, which are fitted after training into
    the ensemble alone (members never read them; one copy is kept, not one per member)."""
    return {n: t.clone() for n, t in ensemble.state_dict().items()
            if not n.startswith("readout.") and n not in MONITOR_BUFFERS}


def _member_config(config: ModelConfig) -> ModelConfig:
    """One network; a Bayesian last layer is fitted after training an ordinary one."""
    return dataclasses.replace(config, ensemble_size=1, uq="ensemble" if config.uq == "bll" else config.uq)


@dataclasses.dataclass
class MemberJob:
    """Everything one member's training needs; picklable, so members can train in parallel
    worker processes."""

    index: int
    model_config: ModelConfig
    train_config: TrainConfig
    shared_state: Dict[str, torch.Tensor]  # normalisation buffers (no readout weights)
    train_frames: List[ase.Atoms]
    val_frames: List[ase.Atoms]
    checkpoint: Optional[Path]
    resume: bool
    init_readout: Optional[Dict[str, torch.Tensor]] = None  # warm start (member slot 0)
    threads: int = 0


def run_member_job(job: MemberJob, progress: Optional[Callable[[dict], None]] = None):
    """Train one member; returns (index, readout state dict, history)."""
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    cutoff = job.model_config.cutoff
    member = MLIPotential(_member_config(job.model_config)).to(torch.float64)
    member.load_state_dict(job.shared_state, strict=False)
    if job.init_readout is not None:
        member.readout.load_state_dict(job.init_readout)
    else:
        member.readout.reset(seed=job.train_config.seed * 1000 + job.index + 1)
    train_graphs = [to_graph(a, cutoff) for a in job.train_frames]
    val_graphs = [to_graph(a, cutoff) for a in job.val_frames]
    trainer = MemberTrainer(member, train_graphs, val_graphs, job.train_config, job.index, job.checkpoint)
    if job.resume:
        trainer.restore()
    trained = trainer.run(progress).to(torch.float64)
    return job.index, trained.readout.state_dict(), trainer.history


def _warm_start_state(source: MLIPotential, member: int) -> Dict[str, torch.Tensor]:
    """Readout weights of ``source``'s member (cycled) as a K = 1 state dict."""
    state = {}
    for name, tensor in source.readout.state_dict().items():
        j = member % tensor.shape[1]
        state[name] = tensor[:, j : j + 1].clone().to(torch.float64)
    return state


class _QueueProgress:
    """Picklable progress callback forwarding epoch records to the parent process."""

    def __init__(self, queue, index: int):
        self.queue = queue
        self.index = index

    def __call__(self, record: dict) -> None:
        self.queue.put((self.index, record))


def _run_jobs(jobs: List[MemberJob], workers: int, progress_factory) -> list:
    if workers <= 1 or len(jobs) == 1:
        return [
            run_member_job(job, progress_factory(job.index, len(jobs)) if progress_factory else None)
            for job in jobs
        ]
    import concurrent.futures
    import multiprocessing
    import queue as queue_module

    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    updates = manager.Queue()
    callbacks = {job.index: progress_factory(job.index, len(jobs)) for job in jobs} if progress_factory else {}
    callbacks = {index: callback for index, callback in callbacks.items() if callback is not None}
    results = []
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_member_job, job, _QueueProgress(updates, job.index)) for job in jobs]
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.5)
            while True:
                try:
                    index, record = updates.get_nowait()
                except queue_module.Empty:
                    break
                if index in callbacks:
                    callbacks[index](record)
        results = [f.result() for f in futures]
    manager.shutdown()
    return results


def _kept_for_inspection(checkpoint_dir: Optional[Path]) -> str:
    if checkpoint_dir is None:
        return ""
    return (f"; the checkpoints in {checkpoint_dir} are kept for inspection (delete the directory, or pass "
            "another --checkpoint, to train again)")


def _check_member_histories(histories: List[List[dict]], checkpoint_dir: Optional[Path]) -> Dict[int, int]:
    """Raise TrainingError for a member without one epoch of finite training and validation loss;
    warn about members that diverged after finite epochs (they keep their best epoch). Returns
    {member: epoch at which it diverged}."""
    diverged = {}
    for k, history in enumerate(histories):
        if not history or all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in history):
            continue
        last = history[-1]
        if not any(math.isfinite(r["val_loss"]) for r in history):
            raise TrainingError(
                f"training diverged: member {k} never reached a finite validation loss (epoch {last['epoch']}: "
                f"training loss {last['train_loss']:.3g}, validation loss {last['val_loss']:.3g}); no model written. "
                "Lower the learning rate (--lr), train in --dtype float64, or look for extreme labels"
                + _kept_for_inspection(checkpoint_dir))
        diverged[k] = int(last["epoch"])
        best = min((r for r in history if math.isfinite(r["val_loss"])), key=lambda r: r["val_loss"])
        warnings.warn(f"member {k} diverged at epoch {last['epoch']} (non-finite loss); it keeps its best epoch "
                      f"{best['epoch']} (validation loss {best['val_loss']:.4g}). A smaller --lr avoids this",
                      RuntimeWarning, stacklevel=3)
    return diverged


def _check_finite_validation(validation: dict, output: Path, checkpoint_dir: Optional[Path]) -> None:
    """Raise TrainingError (before anything is written) when any validation error is NaN/inf."""
    bad = [f"ensemble mean {name}" for name, value in validation["mean"].items() if not math.isfinite(value)]
    for k, member in enumerate(validation["members"]):
        bad += [f"member {k} {name}" for name, value in member.items() if not math.isfinite(value)]
    if bad:
        raise TrainingError(
            f"the trained model's validation errors are not finite ({', '.join(bad[:6])}"
            f"{', ...' if len(bad) > 6 else ''}): training diverged or the data hold extreme values; "
            f"{output} was not written. Lower the learning rate (--lr), train in --dtype float64, or check the "
            "labels" + _kept_for_inspection(checkpoint_dir))


def _fit_descriptor(model: MLIPotential, graphs: Sequence[LabelledGraph], init_from: Optional[MLIPotential]) -> dict:
    """Fit a compressed descriptor's radial mixing to the training graphs (a warm start keeps
    its model's, which its readout weights were trained on); a summary for the report."""
    descriptor = model.descriptor
    summary = {"channels": int(descriptor.n_channels), "n_features": int(descriptor.n_features),
               "compressed": bool(descriptor.compressed)}
    if not descriptor.compressed:
        return summary
    if init_from is not None and init_from.descriptor.radial_mixing.shape == descriptor.radial_mixing.shape:
        descriptor.radial_mixing.copy_(init_from.descriptor.radial_mixing)
        return {**summary, "radial_mixing": "warm start"}
    return {**summary, **fit_radial_mixing(model, graphs)}


def train_ensemble(
    train_frames: Sequence[ase.Atoms],
    val_frames: Sequence[ase.Atoms],
    model_config: ModelConfig,
    config: TrainConfig,
    output: Path,
    checkpoint_dir: Optional[Path] = None,
    resume: bool = False,
    progress_factory: Optional[Callable[[int, int], Callable[[dict], None]]] = None,
    reference: str = "unknown",
    init_from: Optional[MLIPotential] = None,
    workers: int = 1,
) -> dict:
    """Train a K-member ensemble, export it to ``output`` and return the JSON report.

    Members train independently (own initialisation and batch order), ``workers`` of them
    at a time in separate processes. ``init_from`` warm-starts every member from that
    model's member weights (same architecture), e.g. when retraining on a grown data set.
    """
    output = Path(output)
    cutoff = model_config.cutoff
    model_config = resolve_model_channels(model_config, init_from)
    train_frames = check_frames(train_frames, "training structures")
    val_frames = check_frames(val_frames, "validation structures")
    train_graphs = [to_graph(a, cutoff) for a in train_frames]
    val_graphs = [to_graph(a, cutoff) for a in val_frames]
    elements = sorted({int(z) for a in train_frames + val_frames for z in a.numbers})
    missing = set(elements) - set(model_config.atomic_numbers)
    if missing:
        raise ValueError(f"the data contain atomic numbers {sorted(missing)} not in the model config")
    run_info = {
        "train_sha256": dataset_hash(train_frames),
        "val_sha256": dataset_hash(val_frames),
        "model_config": model_config.to_dict(),
        "train_config": config.to_dict(),
    }
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        run_file = checkpoint_dir / "run.json"
        if run_file.exists():
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{run_file} is unreadable ({exc}); delete {checkpoint_dir} and start "
                                      "without --resume") from None
            if not resume:
                raise FileExistsError(
                    f"checkpoint directory {checkpoint_dir} holds a previous run; pass resume "
                    "(--resume) to continue it or choose another directory"
                )
            if not _same_run(previous, json.loads(json.dumps(run_info))):
                raise ValueError(
                    f"checkpoint in {checkpoint_dir} was made with other data or settings; "
                    "resume needs the same command, or use a fresh checkpoint directory"
                )
        else:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_file, json.dumps(run_info, indent=1))

    torch.manual_seed(config.seed)
    ensemble = MLIPotential(model_config).to(torch.float64)
    descriptor_summary = _fit_descriptor(ensemble, train_graphs, init_from)
    normalisation = fit_normalisation(ensemble, train_graphs)
    shared = shared_member_state(ensemble)
    k_total = model_config.ensemble_size
    threads = max(1, torch.get_num_threads() // max(1, workers)) if workers > 1 else 0
    jobs = [
        MemberJob(
            index=k,
            model_config=model_config,
            train_config=config,
            shared_state=shared,
            train_frames=train_frames,
            val_frames=val_frames,
            checkpoint=None if checkpoint_dir is None else checkpoint_dir / f"member_{k}.pt",
            resume=resume,
            init_readout=None if init_from is None else _warm_start_state(init_from, k),
            threads=threads,
        )
        for k in range(k_total)
    ]
    start = time.perf_counter()
    results = _run_jobs(jobs, workers, progress_factory)
    train_seconds = time.perf_counter() - start
    histories = []
    with torch.no_grad():
        for k, readout_state, history in sorted(results, key=lambda item: item[0]):
            for name, tensor in ensemble.readout.state_dict().items():
                tensor[:, k].copy_(readout_state[name][:, 0])
            histories.append(history)
    diverged = _check_member_histories(histories, checkpoint_dir)

    uq_summary = fit_last_layer_posterior(ensemble, train_graphs) if model_config.uq == "bll" else {}
    domain = fit_domain_statistics(ensemble, train_graphs)
    validation = evaluate_errors(ensemble, val_graphs)
    _check_finite_validation(validation, output, checkpoint_dir)
    report = {
        "output": str(output),
        "reference": reference,
        "train_structures": len(train_graphs),
        "val_structures": len(val_graphs),
        "train_seconds": train_seconds,
        "epochs_per_member": [len(h) for h in histories],
        "diverged_members": diverged,
        "descriptor": descriptor_summary,
        "normalisation": normalisation,
        "uq": {"method": model_config.uq, **uq_summary},
        "validation": validation,
        "model_config": model_config.to_dict(),
        "train_config": config.to_dict(),
    }
    metadata = {
        "provenance": {
            "reference": reference,
            "train_sha256": run_info["train_sha256"],
            "val_sha256": run_info["val_sha256"],
            "train_structures": len(train_graphs),
        },
        "monitors": domain,
        "uq": model_config.uq,
        "training": {"validation_mean": validation["mean"]},
    }
    save_model(ensemble, output, dtype=config.export_dtype, metadata=metadata)
    return report
