"""The EnvironmentFile= subset npud.smoke reads, against systemd.exec(5)'s rules for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from npud.envfile import EnvFileError, parse_env_file, read_env_file

from .conftest import REPO


def parse(text: str) -> dict[str, str]:
    return parse_env_file(text)[0]


def test_comments_blank_lines_and_lines_without_equals_are_ignored() -> None:
    assert parse("# a comment\n; another\n\n   \nnot an assignment\nA=1\n") == {"A": "1"}


def test_whitespace_around_names_and_values_is_dropped_inside_is_kept() -> None:
    assert parse("  A =  two  words  \r\nB=\t x\n") == {"A": "two  words", "B": "x"}


def test_unquoted_backslashes_and_continuations() -> None:
    assert parse("A=a\\\\b\\c\nB=one \\\ntwo\nC=x\n") == {"A": "a\\bc", "B": "one two", "C": "x"}


def test_quotes_inside_an_unquoted_value_are_kept() -> None:
    assert parse("A=it's \"fine\"\n") == {"A": "it's \"fine\""}


def test_single_quotes_are_verbatim_and_may_span_lines() -> None:
    assert parse("A='a \\n $B\nsecond line'\nB=2\n") == {"A": "a \\n $B\nsecond line", "B": "2"}


def test_double_quotes_escape_rules() -> None:
    text = 'A="q\\" b\\\\ d\\$ t\\` k\\x"\nB="one \\\ntwo"\nC="multi\nline"\n'
    assert parse(text) == {"A": 'q" b\\ d$ t` k\\x', "B": "one two", "C": "multi\nline"}


def test_no_expansion_and_no_export_keyword() -> None:
    values, skipped = parse_env_file("HOME=/h\nA=$HOME/x\nexport B=1\n1BAD=2\n")
    assert values == {"HOME": "/h", "A": "$HOME/x"} and skipped == ["export B", "1BAD"]


def test_unsupported_syntax_names_the_line() -> None:
    with pytest.raises(EnvFileError, match=r"f:2: unterminated \"-quoted value"):
        parse_env_file('A=1\nB="open\n', "f")
    with pytest.raises(EnvFileError, match=r"f:1: text after the closing ' is not supported"):
        parse_env_file("A='x'y\n", "f")


def test_the_shipped_examples_parse(tmp_path: Path) -> None:
    for example in ("npud.env.example", "npud-system.env.example"):
        values, skipped = read_env_file(REPO / "contrib" / example)
        assert skipped == [] and all(name.startswith(("OV_GENAI_NPU_", "ZE_INTEL_NPU_")) for name in values), example
    with pytest.raises(EnvFileError, match="cannot read"):
        read_env_file(tmp_path / "missing.env")
