"""Output form: the limits the job prompts state, sentences, word caps and loops."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Final

from .text import folded, normalise

#: The title prompt asks for "3 to 8 words"; 8 is the limit a title must never pass. Fewer than 2
#: words is reported too (a one-word title rarely says what the text is about), but 2 is accepted:
#: "Dentist Appointment" is a good title.
TITLE_MAX_WORDS: Final = 8
TITLE_MIN_WORDS: Final = 2
#: The notification prompt: "one short sentence of at most 20 words".
NOTIFICATION_MAX_WORDS: Final = 20
#: The summary prompt: "at most three sentences".
SUMMARY_MAX_SENTENCES: Final = 3
#: The memory prompt asks for "short standalone statements"; 25 words is generous for one fact.
CANDIDATE_MAX_WORDS: Final = 25


# Where a full stop after a short word does not end the sentence. Titles before a name never end
# one ("Dr. Rahman"); "e.g." and "i.e." introduce what follows. The other abbreviations end a
# sentence only when a capital follows ("at 10 a.m. Bring ..." ends, "no. 5" does not), as do a
# lone digit ("room 5. Bring"; not a list marker: "Decisions: 1. Offline ...") and a lower-case
# letter; a lone capital is an initial ("J. Smith").
_NAME_TITLES = frozenset("dr mr mrs ms prof st mt mme mlle sra srta dra hr fr".split())
_INTRODUCING = frozenset("e.g i.e eg ie z.b cf vgl".split())
_ABBREVIATIONS = frozenset("""
    inc ltd jr sr vs etc no nr approx ca ave jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m
    am pm bzw usw av fig
    """.split())
# A day's number before a month is an ordinal ("am 5. Mai"), not a sentence end.
_MONTHS = frozenset("""
    januar jänner februar märz april mai juni juli august september oktober november dezember
    january february march may june july october december jan feb mar apr jun jul aug sep sept oct nov dec
    """.split())
# . ! ? … then closing quotes or brackets, before white space and more text (a run is matched from
# its start only and never given back: a run of 6000 "?" in an input is one attempt, not 6000
# attempts of up to 6000 characters each, which held the worker thread for 0.3 s); a full stop or a mark
# glued to the next sentence ("room 5.Bring your laptop", "moved!Bring"); CJK full stops, which
# need no space after them.
_SENTENCE_END = re.compile(
    r"(?<![.!?…])[.!?…]++[\"')\]]*+(?=\s+\S)"
    r"|(?<=[^\W_])[.!?]+(?=[A-Z][a-z]+\b)"
    r"|[。！？]+[」』”’）)]*(?=\s*\S)"
)
_LAST_WORD = re.compile(r"(\S+)\s*$")


def words(text: str) -> list[str]:
    """Whitespace-separated words that contain a letter or digit ("-" and "&" are not words)."""
    return [w for w in text.split() if any(c.isalnum() for c in w)]


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    if not match.group().startswith("."):
        return True
    # The word before the full stop: the text since the last space, at most 40 characters back
    # (a longer run is no abbreviation), so that every match costs constant time.
    before = _LAST_WORD.search(text, max(0, match.start() - 40), match.start())
    last = before.group(1).lower().rstrip(".") if before else ""
    following = text[match.end():match.end() + 40].split()
    next_word = following[0].strip("\"'(") if following else ""
    capital_next = next_word[:1].isupper()
    if last in _NAME_TITLES or last in _INTRODUCING:
        return False
    if len(last) == 1 and last.isalpha() and before is not None and before.group(1)[:1].isupper():
        return False  # an initial
    if last.isdigit() and len(last) <= 2 and next_word.lower().rstrip(".,") in _MONTHS:
        return False  # "am 5. Mai"
    if last.isdigit() and len(last) <= 2 and before is not None:
        # A list marker, not a number ending a sentence: "Decisions: 1. Offline mode ...", at the
        # start of the text or after another sentence's end.
        preceding = text[max(0, before.start(1) - 3):before.start(1)].rstrip()
        if not preceding or preceding[-1] in ":.!?;":
            return False
    if last in _ABBREVIATIONS or len(last) == 1:
        return capital_next
    return True


def _sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end that is followed by more text (see _SENTENCE_END and
    _ends_sentence)."""
    return [match.end() for match in _SENTENCE_END.finditer(text) if _ends_sentence(text, match)]


def _cuts(text: str) -> list[int]:
    """Where ``text`` is cut into sentences: the sentence ends found in its normalised view
    (:func:`folded`: invisible characters removed, fullwidth forms folded), as offsets in ``text``
    just after the character that ends each sentence. The jobs cut and the checks count on the one
    view, so "Friday.\u200bBring" and "Friday\uff0e Bring" are two sentences for both."""
    view, origin = folded(text)
    return [origin[end - 1] + 1 for end in _sentence_ends(view)]


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (white space made single spaces, nothing else changed), cut where
    its normalised view ends a sentence (abbreviations, initials, CJK full stops: see
    _SENTENCE_END and _ends_sentence); a piece with nothing visible is no sentence."""
    text = " ".join(text.split())
    cuts = [0, *_cuts(text), len(text)]
    pieces = [text[a:b].strip() for a, b in zip(cuts, cuts[1:])]
    return [piece for piece in pieces if normalise(piece)]


def sentence_count(text: str) -> int:
    """How many sentences :func:`sentences` cuts ``text`` into: the count the form checks use is the
    cut the jobs make."""
    return len(sentences(text))


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (runs of white space made one space, nothing else changed),
    as :func:`sentences` cuts it."""
    text = " ".join(text.split())
    cuts = _cuts(text)
    return text[:cuts[0]] if cuts else text


def first_sentences(text: str, count: int) -> str:
    """The first ``count`` sentences of ``text`` as they stand in it (runs of white space made one
    space, nothing else changed): a prefix, so never longer than ``text``. Joining
    :func:`sentences` with spaces is not: CJK sentences have none between them ("周五。请带")."""
    text = " ".join(text.split())
    bounds = [0, *_cuts(text), len(text)]
    found = 0
    for start, end in zip(bounds, bounds[1:]):
        if normalise(text[start:end].strip()):  # as sentences() counts: a piece with nothing visible is none
            found += 1
            if found == count:
                return text[:end].strip()
    return text


def cap_words(text: str, limit: int) -> str:
    """``text`` cut after its ``limit``-th word (words as counted by :func:`words`)."""
    kept, count = [], 0
    for token in text.split():
        if any(c.isalnum() for c in token):
            if count == limit:
                break
            count += 1
        kept.append(token)
    return " ".join(kept) if count == limit else text


def repeats_itself(text: str, times: int) -> bool:
    """The loop of a small model, not a repeated name: one word three times in a row ("Quick,
    quick, quick"), or a run of three words that comes back ``times`` times ("Team Building
    Review Team Building Review")."""
    tokens = ["".join(c for c in w.casefold() if c.isalnum()) for w in words(normalise(text))]
    trigrams = Counter(zip(tokens, tokens[1:], tokens[2:]))
    if any(a == b == c for a, b, c in trigrams):
        return True
    return any(count >= times for count in trigrams.values())


def title_problems(title: str) -> list[str]:
    if not title.strip():
        return ["empty"]
    problems = []
    count = len(words(title))
    if "\n" in title.strip():
        problems.append("multi_line")
    if count > TITLE_MAX_WORDS:
        problems.append("too_many_words")
    if count < TITLE_MIN_WORDS:
        problems.append("too_few_words")
    if repeats_itself(title, 2):
        problems.append("repetition")
    return problems


def notification_problems(text: str) -> list[str]:
    if not text.strip():
        return ["empty"]
    problems = []
    if "\n" in text.strip():
        problems.append("multi_line")
    if sentence_count(text) > 1:
        problems.append("more_than_one_sentence")
    if len(words(text)) > NOTIFICATION_MAX_WORDS:
        problems.append("too_many_words")
    if repeats_itself(text, 2):
        problems.append("repetition")
    return problems


_SPACE_RUN = re.compile(r"\s+")


def tidy_spaces(text: str) -> str:
    """``text`` composed (NFC: "e" + combining accent is one character, as displayed), each run of
    white space made one space, or one line break where the run held one; no space at either end."""
    text = unicodedata.normalize("NFC", text).strip()
    return _SPACE_RUN.sub(lambda m: "\n" if "\n" in m.group() else " ", text)


def summary_problems(summary: str, source: str) -> list[str]:
    """Empty, longer than its input (characters as written, once its white space is tidied:
    :func:`tidy_spaces`), over three sentences, or looping (a word three times in a row, or a run
    of three words three times)."""
    if not summary.strip():
        return ["empty"]
    problems = []
    if len(tidy_spaces(summary)) > len(source):
        problems.append("longer_than_input")
    if sentence_count(summary) > SUMMARY_MAX_SENTENCES:
        problems.append("too_many_sentences")
    if repeats_itself(summary, 3):
        problems.append("repetition")
    return problems


def candidate_problems(candidates: Iterable[str]) -> list[str]:
    problems = []
    for candidate in candidates:
        if not candidate.strip():
            problems.append("empty_candidate")
        elif "\n" in candidate.strip():
            problems.append("multi_line")
        elif len(words(candidate)) > CANDIDATE_MAX_WORDS:
            problems.append("too_many_words")
    return sorted(set(problems))
