"""Job quality on the evaluation set, through a real npud: well-formed rate, key facts kept,
invented numbers and, for memory candidates, precision, recall and leaked secrets.

usage: python -m bench.quality --model M --device D [--split dev|heldout|all] [--json out.json]
                              [--npud-flags FLAGS] [--compare other.json]

Starts ``npud`` as a child process, sends every item of ``bench/eval/`` through the socket with
npuclient, and scores the answers with ``bench.evalset`` (leaks are judged against the set's own
labels, not with npud's secret filter; what the filter dropped, as the daemon counts it, is
reported next to them). Outputs are
written only to the --json file, never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import evalset
from bench.evalset import Item

SPLIT_CHOICES = ("dev", "heldout", "all")
#: One job may legitimately take long on a slow device; a stuck daemon must still end the run.
CALL_TIMEOUT_S = 600.0

Generate = Callable[[Item], tuple[str | None, list[str] | None, str | None, dict[str, Any]]]


def select(items: Sequence[Item], split: str, limit: int | None) -> list[Item]:
    chosen = [item for item in items if split == "all" or item.split == split]
    return chosen[:limit] if limit is not None else chosen


def load_items(jobs: Sequence[str], split: str, limit: int | None, directory: Path) -> list[Item]:
    return [item for job in jobs for item in select(evalset.load(job, directory), split, limit)]


def run_items(items: Sequence[Item], generate: Generate, progress: bool = True) -> list[dict[str, Any]]:
    records = []
    for index, item in enumerate(items, 1):
        text, candidates, error, extra = generate(item)
        record = evalset.score(item, text, candidates, error, secrets_dropped=extra.pop("secrets_dropped", 0))
        record.update(extra)
        records.append(record)
        if progress:
            print(f"\r{index}/{len(items)} {item.id:<18}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return records


def daemon_generate(client: Any) -> Generate:
    from npuclient.errors import NpuClientError

    def dropped_so_far() -> int:
        # The daemon counts dropped statements by kind only (a statement with two kinds counts
        # twice); items run one at a time, so the growth across one item is that item's drops.
        stats = client.health().stats
        return sum(stats.secrets_dropped.values()) if stats else 0

    def generate(item: Item) -> tuple[str | None, list[str] | None, str | None, dict[str, Any]]:
        before = dropped_so_far() if item.job == "memory_candidate" else 0
        started = time.perf_counter()
        try:
            result = client.generate(item.job, item.input, timeout=CALL_TIMEOUT_S)
        except NpuClientError as exc:  # a failed job is a result of the evaluation, not a crash
            return None, None, type(exc).__name__, {"ms": (time.perf_counter() - started) * 1000}
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        candidates = list(result.candidates) if isinstance(result.candidates, list) else None
        extra: dict[str, Any] = {
            "ms": elapsed_ms,
            "generated_tokens": result.tokens.generated,
            "finish_reason": result.finish_reason,
        }
        if item.job == "memory_candidate":
            extra["secrets_dropped"] = dropped_so_far() - before
        return result.text, candidates, None, extra

    return generate


def summarise(records: Sequence[dict[str, Any]], split: str) -> dict[str, dict[str, Any]]:
    """{job: {split: aggregate}} with "dev", "heldout" and, for --split all, "all"."""
    out: dict[str, dict[str, Any]] = {}
    splits = ("dev", "heldout", "all") if split == "all" else (split,)
    for job in evalset.JOBS:
        mine = [r for r in records if r["job"] == job]
        if not mine:
            continue
        out[job] = {s: evalset.aggregate(r for r in mine if s == "all" or r["split"] == s) for s in splits}
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def report(summary: dict[str, dict[str, Any]]) -> str:
    text_rows = []
    for job in ("title", "summary", "notification"):
        for split, agg in summary.get(job, {}).items():
            if agg["n"]:
                text_rows.append([job, split, agg["n"], agg["errors"], _pct(agg["well_formed"]),
                                  _pct(agg["key_facts"]), _pct(agg["all_kept"]), _pct(agg["invented_rate"])])
    parts = []
    if text_rows:
        parts.append(_table(["job", "split", "n", "errors", "well-formed", "key facts kept", "all kept",
                             "invented numbers"], text_rows))
    memory_rows = []
    for split, agg in summary.get("memory_candidate", {}).items():
        if agg["n"]:
            memory_rows.append([
                split, agg["n"], agg["errors"], _pct(agg["well_formed"]), agg["candidates"], _pct(agg["precision"]),
                _pct(agg["recall"]), f"{agg['leaked_secrets']} ({agg['items_leaking_secrets']} items)",
                agg["leaked_private"], agg["leaked_trivia"], _pct(agg["invented_rate"]),
                f"{agg['filter_drops']} ({agg['filter_caught_leaks']}/{agg['items_with_labelled_secret']} items)",
            ])
    if memory_rows:
        parts.append(_table(["memory_candidate", "n", "errors", "well-formed", "candidates", "precision", "recall",
                             "leaked secrets", "leaked private", "leaked trivia", "invented numbers",
                             "filter dropped (in items with a secret)"], memory_rows))
    return "\n\n".join(parts)


def differences(records: Sequence[dict[str, Any]], other: Sequence[dict[str, Any]], name: str) -> str:
    """Per job and part: how many outputs differ from ``other``'s for the same items (memory
    candidates: the list of candidates)."""
    def answer(record: dict[str, Any]) -> Any:
        return record.get("candidates") if record["job"] == "memory_candidate" else record["output"]

    theirs = {r["id"]: answer(r) for r in other}
    rows = []
    for job in evalset.JOBS:
        for split in evalset.SPLITS:
            mine = [r for r in records if r["job"] == job and r["split"] == split and r["id"] in theirs]
            if mine:
                rows.append([job, split, f"{sum(answer(r) != theirs[r['id']] for r in mine)}/{len(mine)}"])
    return _table(["job", "split", f"differs from {name}"], rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="as for npud --model (smollm2-135m, an IR folder, a .gguf)")
    parser.add_argument("--device", required=True, help="as for npud --device (CPU, NPU)")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="all")
    parser.add_argument("--json", help="write the summary and every item's output and scores here")
    parser.add_argument("--jobs", default=",".join(evalset.JOBS), help="comma-separated subset of the jobs")
    parser.add_argument("--limit", type=int, help="at most this many items per job (a smoke run)")
    parser.add_argument("--cache-dir", help="npud --cache-dir (default: $NPUD_BENCH_CACHE or ~/.cache/npud)")
    parser.add_argument("--eval-dir", type=Path, default=evalset.EVAL_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--npud-flags", default="", metavar="FLAGS",
                        help="extra npud flags, e.g. --no-prompt-lookup")
    parser.add_argument("--compare", type=Path, metavar="OTHER.json",
                        help="also count, per job and part, the outputs that differ from this earlier --json run")
    args = parser.parse_args(argv)
    unknown = set(args.jobs.split(",")) - set(evalset.JOBS)
    if unknown:
        parser.error(f"unknown jobs: {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from bench.harness import DaemonProcess
    from npuclient import Client

    args = parse_args(argv)
    items = load_items(args.jobs.split(","), args.split, args.limit, args.eval_dir)
    cache = args.cache_dir or os.environ.get("NPUD_BENCH_CACHE") or str(Path.home() / ".cache" / "npud")
    daemon = DaemonProcess(["--device", args.device, "--model", args.model, "--cache-dir", cache, "--no-http",
                            *shlex.split(args.npud_flags)])
    try:
        with Client(daemon.socket, timeout=CALL_TIMEOUT_S) as client:
            health = client.health()
            records = run_items(items, daemon_generate(client), progress=not args.quiet)
            stats = client.health().stats
    finally:
        daemon.stop()
    summary = summarise(records, args.split)
    print(f"npud quality: model {health.model} on {health.device}, split {args.split}, "
          f"{len(items)} items, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(report(summary))
    guards = {"decoding": health.decoding or None,
              "fallbacks": dict(stats.fallbacks) if stats else {},
              "secrets_dropped": dict(stats.secrets_dropped) if stats else {}}
    print(f"\ndecoding {guards['decoding']}; answers replaced by post-processing (job:reason): "
          f"{guards['fallbacks'] or 'none'}; memory candidates dropped for a secret: {guards['secrets_dropped'] or 'none'}")
    if args.compare:
        print()
        print(differences(records, json.loads(args.compare.read_text(encoding="utf-8"))["items"], args.compare.name))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model": health.model, "device": health.device, "split": args.split, "npud_flags": args.npud_flags,
             **guards, "summary": summary, "items": records}, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
