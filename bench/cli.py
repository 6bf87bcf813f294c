"""Command line of the bench (`python -m bench`, run by bench/run): options, the results folder,
machine facts, and rebuilding a summary from raw records."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import instructions, report
from bench.bench import _DROPPED_ENV, BENCH, FULL, QUICK, ROOT, SYSTEMS, Bench, Settings, hold_cap
from bench.instructions import PHASE_NAMES, InstructionBench


def machine_facts(python: str) -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except OSError:
            return "missing"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr) else "?"

    code = (
        "import tornado, pycurl, sys; from tornadoproxy import __version__ as v; "
        "print(f'tornadoproxy {v}, Python {sys.version.split()[0]}, tornado {tornado.version}, "
        '{" ".join(pycurl.version.split()[:2])}\')'
    )
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "somaxconn": Path("/proc/sys/net/core/somaxconn").read_text().strip(),
        "nginx": version(["nginx", "-v"]),
        "wrk": " ".join(version(["wrk", "-v"]).split()[:2]),
        "gateway_stack": version([python, "-c", code]),
        "git": version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def rewrite_summary(folder: Path) -> int:
    """Rebuild summary.md from a results folder's raw.jsonl and args.json (no process is started)."""
    saved = json.loads((folder / "args.json").read_text())
    records = [json.loads(line) for line in (folder / "raw.jsonl").read_text().splitlines() if line]
    if "settings" not in saved:  # an --instructions run
        text = instructions.summary(records, saved["argv"], saved["machine"])
        (folder / "summary.md").write_text(text)
        print(text)
        return 0
    settings = Settings(**saved["settings"])
    nofile = saved["machine"]["nofile"][1]
    text = report.summary(records, settings, saved["machine"], hold_cap(nofile), saved["argv"])
    (folder / "summary.md").write_text(text)
    print(text)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run, about 3 minutes")
    parser.add_argument(
        "--systems",
        help=f"subset of {','.join(SYSTEMS)} (default: all of them, gateway-base only with --base)",
    )
    parser.add_argument("--reps", type=int, help="repetitions (tables show medians)")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1, help="2: SUTs on cpus 0,1")
    parser.add_argument("--hold-c", type=int, help="streams held at once in the hold test (<= 10000)")
    parser.add_argument("--wrk-seconds", type=int, help="duration of the 64-connection wrk test")
    parser.add_argument("--profile", action="store_true", help="also py-spy the gateway and naive relay")
    parser.add_argument("--py-spy", default="py-spy", help="py-spy executable (a throwaway venv's)")
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument("--soak", type=int, default=0, help="soak the gateway for this many seconds")
    parser.add_argument(
        "--base",
        type=Path,
        help="a checkout of another commit (e.g. a git worktree): its gateway runs as gateway-base",
    )
    parser.add_argument(
        "--instructions",
        nargs="?",
        const=",".join(PHASE_NAMES),
        metavar="PHASES",
        help="instead of the tests: callgrind's instruction counts per request, stream and event "
        f"(phases {','.join(PHASE_NAMES)}; default all), gateway and gateway-base side by side",
    )
    parser.add_argument(
        "--keep-profiles", action="store_true", help="--instructions: keep callgrind's dumps in callgrind/"
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<timestamp>)")
    parser.add_argument(
        "--report", type=Path, metavar="DIR", help="only rewrite DIR/summary.md from raw.jsonl"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: the `finally` below stops every process the bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.report:
        return rewrite_summary(args.report)
    if args.instructions:
        return run_instructions(args, argv)
    settings = QUICK if args.quick else FULL
    settings = replace(
        settings,
        reps=args.reps or settings.reps,
        workers=args.workers,
        hold_c=min(args.hold_c or settings.hold_c, 10000),
        wrk_s=args.wrk_seconds or settings.wrk_s,
    )
    if args.profile and shutil.which(args.py_spy) is None:
        print(f"--profile: no py-spy at {args.py_spy!r}; see bench/README.md", file=sys.stderr)
        return 2
    if args.systems is None:  # gateway-base runs another checkout: only when one is given
        systems = [s for s in SYSTEMS if s != "gateway-base" or args.base is not None]
    else:
        systems = [s for s in args.systems.split(",") if s]
    if "gateway-base" in systems and (args.base is None or not (args.base / "tornadoproxy").is_dir()):
        print("gateway-base needs --base DIR, a checkout with tornadoproxy/ in it", file=sys.stderr)
        return 2
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        print(f"unknown systems: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    label = time.strftime("%Y%m%d-%H%M%S") + f"-{settings.mode}" + ("-soak" if args.soak else "")
    out = args.out or BENCH / "results" / label
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(settings, out, args)
    facts = machine_facts(bench.python)
    (out / "args.json").write_text(
        json.dumps({"argv": argv, "settings": asdict(settings), "machine": facts}, indent=2)
    )
    try:
        if args.soak:
            from bench.soak import soak

            soak(bench, min(args.soak, 3600))
        else:
            bench.run(systems)
    finally:
        bench.procs.stop_all()
        bench.clean_up()
    if not args.soak:
        summary = report.summary(bench.records, settings, facts, bench.hold_cap(), argv)
        (out / "summary.md").write_text(summary)
        print(summary)
    print(f"results in {out}")
    return 0


def run_instructions(args: argparse.Namespace, argv: list[str]) -> int:
    """`--instructions`: this checkout's gateway and the base checkout's, each under callgrind."""
    systems = ["gateway", "gateway-base"] if args.base is not None else ["gateway"]
    if args.systems:
        systems = [s for s in args.systems.split(",") if s]
    if "gateway-base" in systems and (args.base is None or not (args.base / "tornadoproxy").is_dir()):
        print("gateway-base needs --base DIR, a checkout with tornadoproxy/ in it", file=sys.stderr)
        return 2
    args.phases = [p for p in args.instructions.split(",") if p]
    unknown = set(systems) - {"gateway", "gateway-base"} or set(args.phases) - set(PHASE_NAMES)
    if unknown:
        print(f"--instructions: unknown systems or phases: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"--instructions needs {tool} (Debian: valgrind; bench/run installs it)", file=sys.stderr)
            return 2
    out = args.out or BENCH / "results" / (time.strftime("%Y%m%d-%H%M%S") + "-instructions")
    out.mkdir(parents=True, exist_ok=True)
    python = str(ROOT / ".venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV and "proxy" not in k.lower()}
    facts = machine_facts(python)
    (out / "args.json").write_text(json.dumps({"argv": argv, "machine": facts}, indent=2))
    bench = InstructionBench(out, args, python, env)
    try:
        bench.run(systems, args.reps or 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    finally:
        bench.procs.stop_all()
        bench.clean_up()
    text = instructions.summary(bench.records, argv, facts)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
