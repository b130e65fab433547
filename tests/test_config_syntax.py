"""A config's syntax errors and misspelt tables, as a newcomer makes them: each gets FILE:LINE
and says what was expected (tomllib's own words where they already do)."""

from __future__ import annotations

import pytest

from broker.config.errors import ConfigError
from broker.config.load import parse_settings

CASES = [
    # (document, line, words the message must hold)
    ('[server]\nlisten = ["127.0.0.1:8721"\n', 2, ("Unclosed array", "expected ']'")),
    ("[server]\nlisten = 127.0.0.1:8721\n", 2, ('"quotes"',)),
    ("[server\n", 1, ("Expected ']'",)),
    ("[server]\nlog_level = \n", 2, ("expected a value", '"quoted string"')),
    ('[server]\nlog_level = "info\n', 2, ("closing quote",)),
    ('[server]\nlog_level = "info"\nlog_level = "debug"\n', 3, ("set twice",)),
    ("[server]\n[server]\n", 2, ("declared twice",)),
    ("[server]\nx = {a = 1\n", 2, ("expected '}'",)),
]


@pytest.mark.parametrize(("text", "line", "words"), CASES)
def test_a_syntax_error_has_its_line_and_says_what_was_expected(text, line, words) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, file="broker.toml", mode="offline")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.path) == ("broker.toml", line, "(syntax)")
    for word in words:
        assert word in problem.message, problem.message


def test_a_misspelt_table_name_has_its_line() -> None:
    text = '[server]\nlisten = ["127.0.0.1:8721"]\n\n[profile.default]\ntenant_id = "x"\n'
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, file="broker.toml", mode="offline")
    problems = [p for p in caught.value.problems if p.path == "profile"]
    assert len(problems) == 1
    assert problems[0].line == 4 and "did you mean 'profiles'" in problems[0].message
    assert str(problems[0]).startswith("broker.toml:4: profile:")


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nx = " + "[" * 5000 + "]" * 5000 + "\n",
        "[server]\nx = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n",
    ],
    ids=["arrays", "inline tables"],
)
def test_nesting_too_deep_for_the_parser_is_a_syntax_error_not_a_traceback(text) -> None:
    """A few KB of `[[[[...` exhausts tomllib's recursion: check-config must still exit 2 with
    the problem named (and a reload must still be refused in words), not a RecursionError."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, file="broker.toml", mode="offline")
    (problem,) = caught.value.problems
    assert (problem.file, problem.path) == ("broker.toml", "(syntax)")
    assert "nested too deeply" in problem.message


def test_a_config_not_utf8_or_too_large_is_a_problem_not_a_traceback(tmp_path, capsys) -> None:
    from broker.cli.main import main

    cases = {
        "binary.toml": (b'[server]\nlisten = ["\xff\xfe"]\n', "not UTF-8 text"),
        "huge.toml": (b"[server]\n#" + b"x" * (2 << 20) + b"\n", "larger than 1048576 bytes"),
        "deep.toml": (b"[server]\nx = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert main(["check-config", "--offline", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr()
        said = err.out + err.err
        assert words in said and "Traceback" not in said, (name, said[-300:])
