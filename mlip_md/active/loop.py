"""The active-learning loop as a resumable state machine.

    initial set -> [label -> train (warm start) -> evaluate -> stop? -> explore -> select] ...

Order of record (crash safety): selected configurations are inserted as pending rows in one
transaction; each oracle result replaces its row in one transaction right after the call;
models are written atomically (members checkpoint every epoch); ``state.json`` (atomic) records
the iteration and the step. Re-running the same command after a kill at any point resumes:
pending rows are labelled (an interrupted call is made once more), done rows are never sent to
the oracle again, training continues from its member checkpoints.

Test hooks (environment): ``MLIP_MD_TEST_KILL_AFTER_LABELS=k`` / ``..._AFTER_EPOCHS=k`` /
``..._IN_LABEL=k`` make the process SIGKILL itself right after its k-th committed label / k-th
checkpointed epoch / during its k-th oracle call (after the call started, before its result
is stored).
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable, Dict, Optional

import numpy as np

from ..model.io import load_potential
from ..model.potential import ModelConfig
from ..runtime.factory import load_model
from ..train.data import to_graph
from ..train.fit import evaluate_errors
from ..train.trainer import TrainConfig, split_train_val, train_ensemble
from .config import ActiveConfig, ConfigError
from .explore import Scorer, explore
from .oracle import Oracle
from .store import Store
from .strategies import EnsembleObjective, SelectionContext, fingerprint, get_strategy
from .systems import initial_structures, start_structures
from .testset import ensure_test_set

RESUMABLE_CHANGES = ("stop", "run.device")


def _kill_hook(name: str, count: int) -> None:
    limit = os.environ.get(f"MLIP_MD_TEST_KILL_{name}")
    if limit and count >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def _first_difference(old, new, prefix=""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            diff = _first_difference(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
            if diff:
                return diff
        return None
    return None if old == new else prefix


class ActiveLoop:
    """One run of the loop in ``config.directory``. ``bars``: tqdm progress bars;
    ``log``: where the per-iteration lines go; ``oracle``: override the SPEC (tests)."""

    def __init__(self, config: ActiveConfig, bars: bool = True, log: Callable[[str], None] = print,
                 oracle: Optional[Oracle] = None):
        self.cfg = config
        self.store = Store(config.directory)
        self.oracle = oracle or Oracle(config.oracle.spec, log=self.store.directory / "oracle_calls.log")
        if self.oracle.log_path is None:
            self.oracle.log_path = self.store.directory / "oracle_calls.log"
        self.starts = start_structures(config.system)
        self.bars = bars
        self.log = log
        self.labels_this_process = 0
        self.epochs_this_process = 0
        self._test_graphs = None

    # ------------------------------------------------------------------ helpers
    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=not self.bars, leave=False, dynamic_ncols=True)

    def _state(self) -> dict:
        state = self.store.load_state()
        config = self.cfg.to_dict()
        if state is None:
            state = {"iteration": 0, "step": "label", "history": [], "explore": {}, "stopped": None,
                     "config": config, "started": time.time()}
            self.store.save_state(state)
            return state
        for key in RESUMABLE_CHANGES:
            section, _, field = key.partition(".")
            if field:
                state["config"][section][field] = config[section][field]
            else:
                state["config"][section] = config[section]
        diff = _first_difference(state["config"], config)
        if diff:
            raise ConfigError(
                f"{self.store.directory} holds a run made with another setting of {diff!r}; resume with the "
                f"same config (only [stop] may change) or choose another [run] directory")
        state["config"] = config
        return state

    # ------------------------------------------------------------------ steps
    def label(self, kind: str, iteration: int) -> Dict[str, int]:
        """Label pending rows and retry failed ones from earlier iterations."""
        rows = [r for r in self.store.to_label(kind, self.cfg.oracle.max_attempts)
                if r.status == "pending" or r.get("attempt_iteration", -1) < iteration]
        counts = {"done": 0, "failed": 0}
        bar = self._bar(len(rows), f"label ({self.oracle.spec})")
        for row in rows:
            attempt = row.attempts + 1
            self.oracle.log("start", row=row.id, kind=kind, attempt=attempt)
            _kill_hook("IN_LABEL", self.labels_this_process + 1)  # tests: die during the call
            result = self.oracle.label(row.toatoms())
            if result.ok:
                self.store.mark_done(row.id, result.atoms, attempts=attempt, wall_time=result.wall_time,
                                     oracle=self.oracle.spec, attempt_iteration=iteration)
                counts["done"] += 1
            else:
                self.store.mark_failed(row.id, result.error, attempts=attempt, wall_time=result.wall_time,
                                       oracle=self.oracle.spec, attempt_iteration=iteration)
                counts["failed"] += 1
                self.log(f"  oracle failed on row {row.id} (attempt {attempt}/{self.cfg.oracle.max_attempts}): "
                         f"{result.error}; kept for retry")
            self.oracle.log("end", row=row.id, kind=kind, attempt=attempt,
                            status="done" if result.ok else "failed", wall_time=result.wall_time)
            self.labels_this_process += 1
            bar.update()
            _kill_hook("AFTER_LABELS", self.labels_this_process)
        bar.close()
        return counts

    def model_config(self) -> ModelConfig:
        m = self.cfg.model
        import ase.data

        return ModelConfig(atomic_numbers=[ase.data.atomic_numbers[self.cfg.system.element]], cutoff=m.cutoff,
                           switch_width=m.switch_width, n_max=m.n_max, l_max=m.l_max, hidden=tuple(m.hidden),
                           ensemble_size=m.ensemble_size)

    def train(self, iteration: int) -> dict:
        t = self.cfg.train
        frames = self.store.labelled("train")
        train, val = split_train_val(frames, t.val_fraction, self.cfg.run.seed)
        tc = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, patience=t.patience,
                         val_fraction=t.val_fraction, seed=self.cfg.run.seed, dtype=t.dtype, device=self.cfg.run.device)
        init = None
        if t.warm_start and iteration > 0 and self.store.model_path(iteration - 1).exists():
            init = load_potential(self.store.model_path(iteration - 1))
        k = self.cfg.model.ensemble_size
        bar = self._bar(k * t.epochs, f"train {len(train)}+{len(val)} structures")

        def factory(member: int, total: int):
            def update(record: dict) -> None:
                bar.update()
                bar.set_postfix(member=member + 1, F=f"{record['val_force_rmse']:.3f}", refresh=False)
                self.epochs_this_process += 1
                _kill_hook("AFTER_EPOCHS", self.epochs_this_process)

            return update

        report = train_ensemble(train, val, self.model_config(), tc, self.store.model_path(iteration),
                                checkpoint_dir=self.store.checkpoint_dir(iteration), resume=True,
                                progress_factory=factory, reference=self.oracle.spec, init_from=init)
        bar.close()
        return {"train_structures": len(train), "val_structures": len(val), "train_seconds": report["train_seconds"],
                "val_force_rmse": report["validation"]["mean"]["force_rmse"]}

    def test_graphs(self):
        if self._test_graphs is None:
            frames = ensure_test_set(self.cfg, self.store, self.starts, self.oracle, self.log)
            self._test_graphs = [to_graph(a, self.cfg.model.cutoff) for a in frames]
        return self._test_graphs

    def evaluate(self, iteration: int) -> dict:
        errors = evaluate_errors(load_potential(self.store.model_path(iteration)), self.test_graphs())
        return {"force_rmse": errors["mean"]["force_rmse"],
                "energy_rmse_per_atom": errors["mean"]["energy_rmse_per_atom"],
                "test_structures": errors["n_structures"]}

    def explore_and_select(self, iteration: int) -> dict:
        """Explore with model iteration-1, select a batch, insert it as pending rows."""
        cfg = self.cfg
        path = self.store.model_path(iteration - 1)
        model = load_model(path, device=cfg.run.device)
        steps = sum(s.steps // cfg.explore.sample_every * cfg.explore.sample_every for s in cfg.explore.schedule)
        bar = self._bar(steps * len(self.starts), f"explore MD (model {iteration - 1})")
        start = time.perf_counter()
        result = explore(model, self.starts, cfg, iteration, progress=bar.update)
        bar.close()
        scorer = Scorer(model, cfg.trigger.mahalanobis_quantile, cfg.trigger.threshold, cfg.run.device)
        train_frames = self.store.labelled("train")
        feats = [scorer.predictor.predict_atoms(a, monitors=True).features for a in train_frames]
        budget = cfg.stop.max_labels - self.store.count(kind="train")
        n = max(0, min(cfg.query.batch_size, budget))
        q = cfg.query
        ctx = SelectionContext(
            rng=np.random.default_rng([cfg.run.seed, iteration, 11]), dedupe_distance=q.dedupe_distance,
            training_features=np.concatenate(feats), training_fingerprints=np.array([fingerprint(f) for f in feats]),
            scorer=scorer, variance=q.variance, adversarial_temperature_K=q.adversarial_temperature_K,
            adversarial_steps=q.adversarial_steps, adversarial_step_size=q.adversarial_step_size,
        )
        if q.strategy == "adversarial":
            ctx.objective = EnsembleObjective(load_potential(path))
        chosen = get_strategy(q.strategy).select(result.pool, n, ctx) if result.pool and n else []
        self.store.add_pending(
            {"atoms": c.atoms, "kind": "train", "iteration": iteration, "strategy": q.strategy,
             "origin": c.origin, **c.trigger_values()} for c in chosen)
        return {"frames": result.n_frames, "triggered": result.n_triggered, "restarts": result.n_restarts,
                "selected": len(chosen), "seconds": time.perf_counter() - start}

    def stop_reason(self, state: dict) -> Optional[str]:
        last = state["history"][-1] if state["history"] else None
        stop = self.cfg.stop
        if last and stop.target_force_rmse > 0 and last["force_rmse"] <= stop.target_force_rmse:
            return f"target force RMSE {stop.target_force_rmse:g} eV/Å reached"
        if self.store.count(kind="train") >= stop.max_labels:
            return f"label budget of {stop.max_labels} reached"
        if state["iteration"] >= stop.max_iterations:
            return f"{stop.max_iterations} iterations done"
        return None

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        state = self._state()
        if state.get("stopped") and not state["stopped"].startswith("no domain shift"):
            state["stopped"] = None  # e.g. a larger [stop] budget: continue
        self.test_graphs()
        if self.store.count(kind="train") == 0:
            frames = initial_structures(self.cfg.system, self.cfg.initial.n, self.cfg.initial.rattle,
                                        self.cfg.initial.strain, self.cfg.run.seed)
            self.store.add_pending({"atoms": a, "kind": "train", "iteration": 0, "strategy": "initial",
                                    "origin": f"initial {a.info['structure']}"} for a in frames)
        from tqdm import tqdm

        loop_bar = tqdm(total=self.cfg.stop.max_labels, desc="active learning (labels)", disable=not self.bars,
                        dynamic_ncols=True, position=0)
        while not state.get("stopped"):
            i = state["iteration"]
            t0 = time.perf_counter()
            if state["step"] == "label":
                counts = self.label("train", i)
                state.update(step="train", labelled=counts)
                self.store.save_state(state)
            if state["step"] == "train":
                info = self.train(i)
                state.update(step="evaluate", train=info)
                self.store.save_state(state)
            if state["step"] == "evaluate":
                entry = {"iteration": i, "labels": self.store.count(kind="train", status="done"),
                         "failed": self.store.count(kind="train", status="failed"), **self.evaluate(i),
                         **state.get("train", {}), "explore": state["explore"].get(str(i), {}),
                         "strategy": self.cfg.query.strategy, "seconds": time.perf_counter() - t0}
                state["history"] = [h for h in state["history"] if h["iteration"] != i] + [entry]
                state["step"] = "next"
                self.store.save_state(state)
                loop_bar.n = entry["labels"]
                loop_bar.refresh()
                ex = entry["explore"]
                self.log(f"iter {i:3d} | labels {entry['labels']:4d} | test F-RMSE {entry['force_rmse']:.4f} eV/Å, "
                         f"E-RMSE {entry['energy_rmse_per_atom'] * 1e3:.2f} meV/atom | "
                         + (f"triggered {ex['triggered']}/{ex['frames']} frames, selected {ex['selected']} | "
                            if ex else ("initial set | " if i == 0 else "")) + f"failed {entry['failed']}")
            if state["step"] == "next":
                reason = self.stop_reason(state)
                if reason:
                    state["stopped"] = reason
                    self.store.save_state(state)
                    break
                j = i + 1
                if j not in self.store.iterations_with_rows("train"):
                    info = self.explore_and_select(j)
                    state["explore"][str(j)] = info
                    if info["selected"] == 0:
                        state["stopped"] = ("no domain shift: no MD frame crossed the trigger" if not info["triggered"]
                                            else "no new candidates (all near-duplicates)")
                        self.store.save_state(state)
                        break
                state.update(iteration=j, step="label")
                self.store.save_state(state)
        loop_bar.close()
        state["finished"] = time.time()
        self.store.save_state(state)
        from .report import write_report

        return write_report(self.store, state, self.oracle.log_path)
