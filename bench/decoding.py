"""Decoding settings judged by the evaluation set: each job's quality measures under several
settings, and how often prompt-lookup decoding changes the text.

usage: python -m bench.decoding [--model smollm2-135m] [--split dev] [--jobs title,summary,notification]
                                [--prompt-lookup] [--compare quality.json] [--json out.json]

Runs in-process on the CPU with a plain ``LLMPipeline``, the jobs' own messages and
post-processing: the variants need settings the daemon does not expose (on purpose). ``current``
is what the job table sets today; ``--compare`` checks that it reproduces the daemon's texts from
a ``bench.quality --json`` file. Not part of the test suite; work on the dev split only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import evalset
from bench.evalset import Item
from bench.quality import _pct, _table, load_items
from npud.engine import DecodeSettings, generation_config
from npud.jobs import JOBS, JobSpec


@dataclass(frozen=True)
class Variant:
    name: str
    repetition_penalty: float | None = None  # None: the job table's settings ("current")
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    prompt_lookup: bool = False
    num_assistant_tokens: int | None = None  # None: the job table's
    max_ngram_size: int | None = None
    #: memory_candidate: without the job's JSON schema ("noschema"), or with the line-list prompt it
    #: had before structured output, and no schema ("lines").
    no_schema: bool = False
    lines_prompt: bool = False

    def settings(self, spec: JobSpec, max_new_tokens: int) -> DecodeSettings:
        table = DecodeSettings.for_job(spec, max_new_tokens)
        if self.name == "old":
            # The job table before the decoding rework: repetition_penalty 1.1 for the three text jobs
            # (no_repeat_ngram_size 3 for title and notification did nothing: see CONTRACT.md section 8).
            return replace(table, repetition_penalty=1.0 if spec.name == "memory_candidate" else 1.1,
                           frequency_penalty=0.0, presence_penalty=0.0)
        if self.repetition_penalty is None:
            return table
        return replace(table, repetition_penalty=self.repetition_penalty, frequency_penalty=self.frequency_penalty,
                       presence_penalty=self.presence_penalty,
                       num_assistant_tokens=self.num_assistant_tokens or table.num_assistant_tokens,
                       max_ngram_size=self.max_ngram_size or table.max_ngram_size)


def parse_variant(name: str) -> Variant:
    """``current`` (the job table's settings), ``old`` (the decoding before the rework:
    repetition_penalty 1.1, no frequency penalty; today's prompts), either with ``+lookup``, or
    settings joined by ``+``: ``rp1.0`` (repetition penalty), ``freq0.5``, ``pres0.5`` (frequency
    and presence penalty), ``lookup`` (prompt-lookup decoding, with the job table's drafts unless
    ``la5``/``ng3`` give its assistant tokens and n-gram size), and for memory_candidate
    ``noschema`` (no structured output) or ``lines`` (the earlier line-list prompt, no schema)."""
    base, _, rest = name.partition("+")
    if base in ("current", "old"):
        if rest not in ("", "lookup"):
            raise ValueError(f"{base} takes only +lookup, not {rest!r}")
        return Variant(name, prompt_lookup=rest == "lookup")
    fields: dict[str, Any] = {"name": name, "repetition_penalty": 1.0}
    for part in name.split("+"):
        for prefix, key, kind in (("rp", "repetition_penalty", float),
                                  ("freq", "frequency_penalty", float), ("pres", "presence_penalty", float),
                                  ("la", "num_assistant_tokens", int), ("ng", "max_ngram_size", int)):
            if part.startswith(prefix) and part[len(prefix):].replace(".", "", 1).isdigit():
                fields[key] = kind(part[len(prefix):])
                break
        else:
            if part == "noschema":
                fields["no_schema"] = True
            elif part == "lines":
                fields.update(no_schema=True, lines_prompt=True)
            elif part != "lookup":
                raise ValueError(f"unknown setting {part!r} in {name!r}")
            else:
                fields["prompt_lookup"] = True
    return Variant(**fields)


#: memory_candidate's prompt and example before structured output (a "- " list, parsed line by line).
LINES_PROMPT = ("You find facts worth remembering about the user: lasting preferences, personal details, plans and "
                "commitments. Read the user's text and reply with a list, one fact per line, each line starting "
                "with '- ' and written as a short standalone statement about the user. If there is nothing worth "
                "remembering, reply with '- none'.")
LINES_EXAMPLE = ("I'm vegetarian, by the way, and I'm flying to Lisbon on the 14th for a conference.",
                 "- The user is vegetarian.\n- The user is flying to Lisbon on the 14th for a conference.")


DEFAULT_VARIANTS = ("old", "current", "rp1.0", "rp1.0+freq0.3", "rp1.0+freq0.6", "rp1.0+freq1.0",
                    "rp1.0+pres0.6")
DEFAULT_LOOKUP_VARIANTS = ("current+lookup", "rp1.0+lookup")


class Pipeline:
    def __init__(self, model_path: Path, cache: Path, prompt_lookup: bool) -> None:
        import openvino_genai as og

        extra = {"prompt_lookup": True} if prompt_lookup else {}
        self.prompt_lookup = prompt_lookup
        self.pipe = og.LLMPipeline(str(model_path), "CPU", CACHE_DIR=str(cache / "compiled"), **extra)
        self.tokenizer = self.pipe.get_tokenizer()
        self.og = og
        self.model_config = self.pipe.get_generation_config()

    def generate(self, spec: JobSpec, text: str, variant: Variant) -> tuple[str, int, float, DecodeSettings]:
        if variant.lines_prompt and spec.name == "memory_candidate":
            spec = replace(spec, system_prompt=LINES_PROMPT, examples=(LINES_EXAMPLE,))
        prompt = self.tokenizer.apply_chat_template(spec.messages(text), add_generation_prompt=True)
        settings = variant.settings(spec, spec.default_max_new_tokens)
        if variant.no_schema:
            settings = replace(settings, json_schema=None)
        # The daemon's own generation config (engine.generation_config): only the settings differ.
        config = generation_config(self.og, self.model_config, settings, prompt_lookup=self.prompt_lookup)
        started = time.perf_counter()
        result = self.pipe.generate([prompt], config)
        elapsed = (time.perf_counter() - started) * 1000
        return result.texts[0], int(result.perf_metrics.get_num_generated_tokens()), elapsed, settings


def run_variant(pipeline: Pipeline, items: Sequence[Item], variant: Variant) -> list[dict[str, Any]]:
    records = []
    for item in items:
        spec = JOBS[item.job]
        raw, tokens, ms, settings = pipeline.generate(spec, item.input, variant)
        output = spec.postprocess(raw, item.input)
        # The daemon answers an empty output with GenerationFailed; count it the same way.
        error = "GenerationFailed" if output.is_empty else None
        record = evalset.score(item, None if error else output.text, output.candidates, error)
        record.update(variant=variant.name, ms=round(ms, 1), generated_tokens=tokens, settings=asdict(settings),
                      raw=raw)
        records.append(record)
        print(f"\r{variant.name:<22} {item.id:<18}", end="", file=sys.stderr, flush=True)
    return records


def differs(records: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> int:
    """How many outputs differ from the same item's output in ``reference``."""
    by_id = {r["id"]: r["output"] for r in reference}
    return sum(r["output"] != by_id.get(r["id"]) for r in records)


def report(results: dict[str, list[dict[str, Any]]], reference_for: dict[str, str]) -> str:
    rows = []
    for job in evalset.JOBS:
        for split in evalset.SPLITS:
            for name, records in results.items():
                mine = [r for r in records if r["job"] == job and r["split"] == split]
                if not mine:
                    continue
                agg = evalset.aggregate(mine)
                reference = reference_for.get(name)
                if reference not in results:
                    reference = None
                changed = ""
                if reference:
                    others = [r for r in results[reference] if r["job"] == job and r["split"] == split]
                    changed = f"{differs(mine, others)}/{len(mine)} vs {reference}"
                rows.append([job, split, name, agg["n"], _pct(agg["well_formed"]), _pct(agg["key_facts"]),
                             _pct(agg.get("all_kept")), _pct(agg["invented_rate"]),
                             _pct(agg.get("precision")) if job == "memory_candidate" else "",
                             f"{statistics.median(r['ms'] for r in mine):.0f}",
                             f"{statistics.mean(r['generated_tokens'] for r in mine):.1f}", changed])
    return _table(["job", "split", "settings", "n", "well-formed", "key facts kept (recall)", "all kept",
                   "invented numbers", "precision", "median ms", "mean tokens", "texts differ"], rows)


def compare_with_daemon(records: Sequence[dict[str, Any]], path: Path) -> str:
    daemon = {r["id"]: r["output"] for r in json.loads(path.read_text())["items"]}
    shared = [r for r in records if r["id"] in daemon]
    same = sum(r["output"] == daemon[r["id"]] for r in shared)
    return f"'current' in-process reproduces the daemon's text for {same}/{len(shared)} items"


def main(argv: Sequence[str] | None = None) -> int:
    from npud.config import Config
    from npud.engine import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--split", choices=("dev", "heldout", "all"), default="dev")
    parser.add_argument("--jobs", default="title,summary,notification")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=parse_variant.__doc__)
    parser.add_argument("--prompt-lookup", action="store_true",
                        help=f"also run {', '.join(DEFAULT_LOOKUP_VARIANTS)}")
    parser.add_argument("--compare", type=Path, help="a bench.quality --json file of the same model")
    parser.add_argument("--json", help="write every variant's per-item records here")
    args = parser.parse_args(argv)

    cache = Path(os.environ.get("NPUD_BENCH_CACHE") or Path.home() / ".cache" / "npud")
    model_path = resolve_model_path(Config(model=args.model, cache_dir=str(cache), lock_file=str(cache / "bench.lock")))
    items = load_items(args.jobs.split(","), args.split, args.limit, evalset.EVAL_DIR)
    variants = [parse_variant(name) for name in args.variants.split(",")]
    if args.prompt_lookup:
        variants += [parse_variant(name) for name in DEFAULT_LOOKUP_VARIANTS]
    results: dict[str, list[dict[str, Any]]] = {}
    reference_for: dict[str, str] = {}
    # One pipeline at a time: two SmolLM2 pipelines would only compete for the same two cores.
    for lookup in (False, True):
        chosen = [v for v in variants if v.prompt_lookup is lookup]
        if not chosen:
            continue
        pipeline = Pipeline(model_path, cache, prompt_lookup=lookup)
        for variant in chosen:
            results[variant.name] = run_variant(pipeline, items, variant)
            if lookup:
                reference_for[variant.name] = variant.name.replace("+lookup", "")
        del pipeline
    print(file=sys.stderr)
    print(f"decoding study: {args.model} on CPU (in-process), split {args.split}, {len(items)} items per variant")
    if args.json:  # first: the report is computed from it
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    print(report(results, reference_for))
    if args.compare and "current" in results:
        print(compare_with_daemon(results["current"], args.compare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
