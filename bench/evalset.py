"""The evaluation set (``bench/eval/*.jsonl``): loading, validation, matching and scoring.

Pure functions: no model, no daemon. ``bench.quality`` feeds them outputs; the tests check the set
itself. The README in ``bench/eval/`` describes the format and the held-out rule.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npud import guards

EVAL_DIR = Path(__file__).resolve().parent / "eval"
JOBS = ("title", "summary", "notification", "memory_candidate")
SPLITS = ("dev", "heldout")
FORBIDDEN_KINDS = ("secret", "private", "trivia")
#: Item n (1-based, in file order) is held out when n % HELDOUT_EVERY == 0: fixed before any output
#: was looked at, and checked by the tests so that items cannot drift between the parts.
HELDOUT_EVERY = 4

#: A term is a list of alternatives; it is present when any alternative is.
Term = list[str]


@dataclass(frozen=True)
class Forbidden:
    kind: str
    terms: list[Term]


@dataclass(frozen=True)
class Item:
    id: str
    job: str
    split: str
    lang: str
    source: str
    input: str
    #: title, summary, notification: what a good output keeps.
    keep: list[Term] = field(default_factory=list)
    #: memory_candidate: facts, each a list of terms that must all appear in one candidate.
    expected: list[list[Term]] = field(default_factory=list)
    #: memory_candidate: what must never be in a candidate (all terms of an entry in one candidate).
    forbidden: list[Forbidden] = field(default_factory=list)


class EvalSetError(ValueError):
    """An item of the evaluation set does not follow the format."""


def _terms(value: Any, where: str) -> list[Term]:
    if not isinstance(value, list) or not all(
        isinstance(term, list) and term and all(isinstance(a, str) and a.strip() for a in term) for term in value
    ):
        raise EvalSetError(f"{where}: expected a list of terms (non-empty lists of strings)")
    return value


def parse_item(raw: dict[str, Any], where: str) -> Item:
    keys = {"id", "job", "split", "lang", "source", "input"}
    missing = keys - raw.keys()
    if missing:
        raise EvalSetError(f"{where}: missing {sorted(missing)}")
    if raw["job"] not in JOBS or raw["split"] not in SPLITS:
        raise EvalSetError(f"{where}: bad job or split")
    if not isinstance(raw["input"], str) or not raw["input"].strip():
        raise EvalSetError(f"{where}: empty input")
    job = raw["job"]
    if job == "memory_candidate":
        allowed = keys | {"expected", "forbidden"}
        expected = [_terms(fact, f"{where} expected") for fact in raw.get("expected", [])]
        forbidden = []
        for entry in raw.get("forbidden", []):
            if not isinstance(entry, dict) or entry.get("kind") not in FORBIDDEN_KINDS:
                raise EvalSetError(f"{where}: forbidden entries need a kind in {FORBIDDEN_KINDS}")
            forbidden.append(Forbidden(entry["kind"], _terms(entry.get("terms"), f"{where} forbidden")))
        item = Item(raw["id"], job, raw["split"], raw["lang"], raw["source"], raw["input"],
                    expected=expected, forbidden=forbidden)
    else:
        allowed = keys | {"keep"}
        keep = _terms(raw.get("keep"), f"{where} keep")
        if not keep:
            raise EvalSetError(f"{where}: keep is empty")
        item = Item(raw["id"], job, raw["split"], raw["lang"], raw["source"], raw["input"], keep=keep)
    extra = raw.keys() - allowed
    if extra:
        raise EvalSetError(f"{where}: unknown fields {sorted(extra)}")
    return item


def load(job: str, directory: Path = EVAL_DIR) -> list[Item]:
    path = directory / f"{job}.jsonl"
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            item = parse_item(json.loads(line), f"{path.name}:{number}")
            if item.job != job:
                raise EvalSetError(f"{path.name}:{number}: job {item.job} in the {job} file")
            items.append(item)
    return items


def expected_split(position: int) -> str:
    """The held-out rule for the item at 1-based ``position`` of its file."""
    return "heldout" if position % HELDOUT_EVERY == 0 else "dev"


# ---------------------------------------------------------------- matching

def fold(text: str) -> str:
    """Case, accents, dashes, quotes and spacing do not matter when looking for a term."""
    text = guards.normalise(text)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text.casefold()


def _pattern(alternative: str) -> re.Pattern[str]:
    """Where an alternative may appear: spaces and dashes inside it are optional ("583 201" is
    found in "583201", "Sunflower-92" in "Sunflower 92"); a number does not continue into more
    digits ("14" is in "14th", not in "140"); a word of under four letters is a whole word ("Jo" is
    not in "Joanna"); a longer word may continue ("invoice" is in "invoices")."""
    compact = re.sub(r"[\s-]+", "", fold(alternative))
    body = r"[\s-]*".join(re.escape(c) for c in compact)
    start = r"(?<![^\W_])" if compact[0].isalnum() else ""
    if compact[-1].isdigit():
        end = r"(?!\d)"
    elif compact[-1].isalpha() and len(compact) < 4:
        end = r"(?![^\W_])"
    else:
        end = ""
    return re.compile(start + body + end)


def has_term(term: Term, text: str) -> bool:
    folded = fold(text)
    return any(_pattern(alternative).search(folded) for alternative in term)


def has_all(terms: Sequence[Term], text: str) -> bool:
    return all(has_term(term, text) for term in terms)


# ---------------------------------------------------------------- scoring

def form_problems(item: Item, text: str, candidates: Sequence[str] | None) -> list[str]:
    if item.job == "title":
        return guards.title_problems(text)
    if item.job == "notification":
        return guards.notification_problems(text)
    if item.job == "summary":
        return guards.summary_problems(text, item.input)
    return guards.candidate_problems(candidates or [])


def score(item: Item, text: str | None, candidates: Sequence[str] | None = None,
          error: str | None = None, secrets_dropped: int = 0) -> dict[str, Any]:
    """The per-item record: the output, its problems and what it kept, invented and leaked.

    ``secrets_dropped``: memory candidates npud's secret filter dropped from this answer (the
    returned ``candidates`` are what is left, so the filter's work is not visible in them)."""
    record: dict[str, Any] = {"id": item.id, "job": item.job, "split": item.split, "error": error}
    if error is not None or text is None:
        record.update(output=None, well_formed=False, problems=["error"], invented=[])
        if item.job == "memory_candidate":
            record.update(candidates=[], facts_found=[False] * len(item.expected), candidate_scores=[])
        else:
            record.update(kept=[False] * len(item.keep))
        return record
    problems = form_problems(item, text, candidates)
    record.update(output=text, problems=problems, well_formed=not problems)
    if item.job != "memory_candidate":
        record.update(kept=[has_term(term, text) for term in item.keep],
                      invented=guards.invented_numbers(text, item.input))
        return record
    candidates = list(candidates or [])
    scores = [score_candidate(item, candidate) for candidate in candidates]
    record.update(
        candidates=candidates,
        candidate_scores=scores,
        secrets_dropped=secrets_dropped,
        labelled_secret=any(entry.kind == "secret" for entry in item.forbidden),
        facts_found=[any(has_all(fact, c) for c in candidates) for fact in item.expected],
        invented=sorted({n for s in scores for n in s["invented"]}),
    )
    return record


def score_candidate(item: Item, candidate: str) -> dict[str, Any]:
    leaks = sorted({entry.kind for entry in item.forbidden if has_all(entry.terms, candidate)})
    matches = [i for i, fact in enumerate(item.expected) if has_all(fact, candidate)]
    return {
        "text": candidate,
        "matches": matches,
        "correct": bool(matches) and not leaks,
        "leaks": leaks,
        "filter": list(guards.find_secrets(candidate)),
        "invented": guards.invented_numbers(candidate, item.input),
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def aggregate(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Rates over a group of records of one job (``None`` where the denominator is zero)."""
    records = list(records)
    n = len(records)
    answered = [r for r in records if r["error"] is None]
    summary: dict[str, Any] = {
        "n": n,
        "errors": n - len(answered),
        "well_formed": _ratio(sum(r["well_formed"] for r in records), n),
        "invented_rate": _ratio(sum(bool(r["invented"]) for r in answered), len(answered)),
    }
    if not records or records[0]["job"] != "memory_candidate":
        terms = sum(len(r["kept"]) for r in records)
        summary.update(
            key_facts=_ratio(sum(sum(r["kept"]) for r in records), terms),
            all_kept=_ratio(sum(all(r["kept"]) for r in records), n),
        )
        return summary
    candidates = [s for r in records for s in r["candidate_scores"]]
    facts = [found for r in records for found in r["facts_found"]]
    secret_leaks = [s for s in candidates if "secret" in s["leaks"]]
    left = [s for s in candidates if s["filter"]]
    with_secret = [r for r in records if r.get("labelled_secret")]
    summary.update(
        candidates=len(candidates),
        precision=_ratio(sum(s["correct"] for s in candidates), len(candidates)),
        recall=_ratio(sum(facts), len(facts)),
        key_facts=_ratio(sum(facts), len(facts)),
        leaked_secrets=len(secret_leaks),
        items_leaking_secrets=sum(any("secret" in s["leaks"] for s in r["candidate_scores"]) for r in records),
        leaked_private=sum("private" in s["leaks"] for s in candidates),
        leaked_trivia=sum("trivia" in s["leaks"] for s in candidates),
        # What npud's filter dropped (reported by the daemon), in how many of the items whose input
        # holds a labelled secret it dropped something, and what it would still drop among the
        # returned candidates (0 unless the filter changed between the run and the scoring).
        filter_drops=sum(r.get("secrets_dropped", 0) for r in records),
        filter_caught_leaks=sum(r.get("secrets_dropped", 0) > 0 for r in with_secret),
        items_with_labelled_secret=len(with_secret),
        filter_left=len(left),
    )
    return summary
