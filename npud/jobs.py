"""The job table: for each job its prompt, token limits, decoding settings and post-processing.

Prompts are written for Qwen2.5-Instruct (the production model) and checked on SmolLM2-135M
(the test model), which needs few-shot examples to keep to the form. Post-processing guards the
form whatever the model does: it never raises on odd output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from npuclient.protocol import MAX_NEW_TOKENS, JobName

from . import guards

TITLE_MAX_CHARS = 80
CANDIDATE_MAX_CHARS = 200
MAX_CANDIDATES = 8

Message = dict[str, str]


@dataclass(frozen=True)
class JobOutput:
    text: str
    candidates: list[str] | None = None
    #: memory_candidate: statements dropped because they held a secret (a count, for /metrics;
    #: the statements themselves are gone).
    secrets_dropped: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.text and self.candidates is None


@dataclass(frozen=True)
class JobSpec:
    name: JobName
    system_prompt: str
    examples: tuple[tuple[str, str], ...]
    default_max_new_tokens: int
    max_new_tokens: int
    postprocess: Callable[[str], JobOutput]
    #: Deadline when the client gives no ``timeout_ms``: generous for the NPU (a 1.5B model makes
    #: about 20 tokens/s), and short enough that a hung job is reported, not waited on forever.
    default_timeout_ms: int
    # Small models loop on short outputs ("Wedding Wedding Wedding"); these stop it. They stay
    # off for list-shaped output, where the repeated "- The user" prefix is legitimate.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int | None = None

    def messages(self, user_input: str) -> list[Message]:
        msgs: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for example_input, example_output in self.examples:
            msgs.append({"role": "user", "content": example_input})
            msgs.append({"role": "assistant", "content": example_output})
        msgs.append({"role": "user", "content": user_input})
        return msgs


# ---------------------------------------------------------------- post-processing

_WRAPPING_QUOTES = "\"'`“”‘’«»"
_LABEL = re.compile(r"^\s*(?:title|summary|notification|headline)\s*[:\-–]\s*", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _strip_decoration(text: str) -> str:
    text = _LABEL.sub("", text.strip())
    text = text.strip().strip("*#_ ").strip()
    while len(text) >= 2 and text[0] in _WRAPPING_QUOTES and text[-1] in _WRAPPING_QUOTES:
        text = text[1:-1].strip()
    return text.strip(_WRAPPING_QUOTES + " ")


def _cap_at_word(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:-–")


# A title cut by the token limit can end mid-phrase ("Tips for a Quicker, Smarter, and").
_DANGLING = frozenset({"and", "or", "with", "for", "the", "a", "an", "of", "to", "in", "on", "by", "from", "&"})


def _drop_dangling(title: str) -> str:
    words = title.split()
    while len(words) > 1 and words[-1].lower().strip(",;:-–") in _DANGLING:
        words.pop()
    return " ".join(words).rstrip(" ,;:-–")


def clean_title(raw: str) -> JobOutput:
    title = _strip_decoration(_first_line(raw)).rstrip(".")
    title = guards.cap_words(title, guards.TITLE_MAX_WORDS)  # the prompt's "3 to 8 words"
    return JobOutput(_drop_dangling(_cap_at_word(title, TITLE_MAX_CHARS)))


def clean_summary(raw: str) -> JobOutput:
    text = _LABEL.sub("", raw.strip()).strip()
    return JobOutput(text)


def clean_notification(raw: str) -> JobOutput:
    line = _strip_decoration(_first_line(raw))
    # "Dr. Rahman" or "10 a.m." does not end the sentence; the prompt's limit is 20 words.
    sentence = guards.first_sentence(line)
    capped = guards.cap_words(sentence, guards.NOTIFICATION_MAX_WORDS)
    return JobOutput(sentence if capped == sentence else _drop_dangling(capped))


def _candidates_from_json(raw: str) -> list[str] | None:
    start = min((i for i in (raw.find("["), raw.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(raw[start:])
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("candidates", value.get("memories"))
    if not isinstance(value, list):
        return None
    return [item for item in value if isinstance(item, str)]


def _candidates_from_lines(raw: str) -> list[str]:
    items = []
    for line in raw.splitlines():
        if _BULLET.match(line):
            items.append(_BULLET.sub("", line))
    return items


def clean_candidates(raw: str) -> JobOutput:
    """Short standalone statements; malformed output gives an empty list, never an exception.

    A statement holding a secret (password, one-time or access code, card number, IBAN, API key
    or token, private key: :func:`npud.guards.find_secrets`) is dropped whatever the model meant,
    and only counted: memory must never keep one.
    """
    found = _candidates_from_json(raw)
    if found is None:
        found = _candidates_from_lines(raw)
    candidates: list[str] = []
    dropped: set[str] = set()
    for item in found:
        statement = " ".join(_strip_decoration(item).split())
        if (
            statement
            and statement.lower() not in {"none", "n/a", "nothing"}
            and len(statement) <= CANDIDATE_MAX_CHARS
            and statement not in candidates
        ):
            if guards.find_secrets(statement):
                dropped.add(statement)
            else:
                candidates.append(statement)
    candidates = candidates[:MAX_CANDIDATES]
    return JobOutput("\n".join(candidates), candidates, secrets_dropped=len(dropped))


# ---------------------------------------------------------------- the table

JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            name="title",
            system_prompt=(
                "You write short titles. Read the user's text and reply with a title of 3 to 8 words "
                "that says what it is about. Reply with the title only: no quotes, no label, no "
                "explanation."
            ),
            examples=(
                ("I spent the afternoon trying to find out why the nightly CI job fails on the "
                 "arm64 runners but passes everywhere else.",
                 "Debugging Nightly CI Failures on arm64"),
                ("Can you help me plan meals for next week? I want cheap vegetarian dinners that "
                 "take less than 30 minutes.",
                 "Quick Cheap Vegetarian Dinner Plan"),
            ),
            default_max_new_tokens=24,
            max_new_tokens=32,
            postprocess=clean_title,
            default_timeout_ms=30_000,
            repetition_penalty=1.1,
            no_repeat_ngram_size=3,
        ),
        JobSpec(
            name="summary",
            system_prompt=(
                "You summarize text. Reply with a summary of the user's text in at most three "
                "sentences. Keep names, dates and numbers. Reply with the summary only."
            ),
            examples=(
                ("The landlord wrote that the water will be shut off on Tuesday between 9:00 and "
                 "13:00 while the pipes in the basement are replaced. Residents should fill a few "
                 "bottles in advance. The work was postponed twice already because of the cold.",
                 "The water will be off on Tuesday from 9:00 to 13:00 while the basement pipes are "
                 "replaced, so residents should store some water beforehand."),
            ),
            default_max_new_tokens=128,
            max_new_tokens=MAX_NEW_TOKENS,
            postprocess=clean_summary,
            default_timeout_ms=120_000,
            repetition_penalty=1.1,
        ),
        JobSpec(
            name="notification",
            system_prompt=(
                "You condense notifications. Rewrite the user's notification as one short sentence "
                "of at most 20 words that keeps the essential fact. Reply with the sentence only."
            ),
            examples=(
                ("GitHub: pull request #482 'Fix race in scheduler' was merged into main by "
                 "alice. 3 files changed, 41 additions, 12 deletions.",
                 "Alice merged pull request #482 fixing the scheduler race into main."),
            ),
            default_max_new_tokens=48,
            max_new_tokens=64,
            postprocess=clean_notification,
            default_timeout_ms=30_000,
            repetition_penalty=1.1,
            no_repeat_ngram_size=3,
        ),
        JobSpec(
            name="memory_candidate",
            system_prompt=(
                "You find facts worth remembering about the user: lasting preferences, personal "
                "details, plans and commitments. Read the user's text and reply with a list, one "
                "fact per line, each line starting with '- ' and written as a short standalone "
                "statement about the user. If there is nothing worth remembering, reply with "
                "'- none'."
            ),
            examples=(
                ("I'm vegetarian, by the way, and I'm flying to Lisbon on the 14th for a "
                 "conference.",
                 "- The user is vegetarian.\n- The user is flying to Lisbon on the 14th for a "
                 "conference."),
            ),
            default_max_new_tokens=128,
            max_new_tokens=MAX_NEW_TOKENS,
            postprocess=clean_candidates,
            default_timeout_ms=120_000,
        ),
    )
}
