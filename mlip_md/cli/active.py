"""``mlip-md active run | benchmark``: the active-learning loop (:mod:`mlip_md.active`) and the
query-strategy benchmark (:mod:`mlip_md.active.benchmark`)."""
from __future__ import annotations

from pathlib import Path


def _names(text: str) -> list:
    """'a,b,,c' -> ['a', 'b', 'c']."""
    return [s for s in text.split(",") if s]


def add_parsers(sub) -> None:
    p = sub.add_parser("active", help="active learning: MD exploration, domain-shift trigger, query strategies, "
                       "oracle labels, retraining; resumable")
    asub = p.add_subparsers(dest="workflow", required=True)
    q = asub.add_parser("run", help="run (or resume, after any interruption) the loop described by a TOML config")
    q.add_argument("config", type=Path, help="TOML config (see docs/active-learning.md)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    q.set_defaults(func=cmd_active_run)
    q = asub.add_parser("benchmark", help="oracle queries each strategy needs to reach a test force RMSE (EMT Cu)")
    q.add_argument("--out", type=Path, default=Path("active_benchmark"), help="output directory (resumable)")
    q.add_argument("--seeds", type=int, default=3)
    q.add_argument("--strategies", default="random,max-variance,d-optimal,adversarial",
                   help="comma-separated strategies")
    q.add_argument("--threshold", type=float, default=None, help="test force RMSE to reach, eV/Å (default 0.1)")
    q.add_argument("--max-labels", type=int, default=None, help="label budget per run (default 48)")
    q.add_argument("--stage-steps", type=int, default=None,
                   help="MD steps per exploration stage (default 15; 3 stages, a frame every 5 steps)")
    q.add_argument("--batch-size", type=int, default=None, help="structures labelled per iteration (default 4)")
    q.add_argument("--temperatures", default=None,
                   help="comma-separated exploration stage temperatures, K (default 300,800,1500)")
    q.add_argument("--extra-structures", default=None,
                   help="comma-separated structures explored besides the test ones (divacancy, surface110)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_active_benchmark)


def cmd_active_run(args) -> int:
    from ..active import run
    from ..active.report import summary

    print(summary(run(args.config, bars=not args.no_progress)))
    return 0


def cmd_active_benchmark(args) -> int:
    from ..active.benchmark import run_benchmark

    kwargs = {k: v for k, v in (("threshold", args.threshold), ("max_labels", args.max_labels),
                                ("stage_steps", args.stage_steps), ("batch_size", args.batch_size)) if v is not None}
    if args.temperatures:
        kwargs["temperatures"] = [float(t) for t in _names(args.temperatures)]
    if args.extra_structures:
        kwargs["extra_structures"] = _names(args.extra_structures)
    result = run_benchmark(args.out, seeds=args.seeds, strategies=_names(args.strategies), bars=not args.no_progress,
                           **kwargs)
    print(result["markdown"])
    print(f"wrote {args.out / 'benchmark.json'}, {args.out / 'benchmark.md'}, {args.out / 'learning_curves.png'}")
    return 0
