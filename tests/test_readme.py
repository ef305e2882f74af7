"""The README's Python examples run as written, and print what the README says they print."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")


def _matches(expected: str, printed: str) -> bool:
    """printed reads like expected: same words, numbers within 0.03 (BLAS and kernel flavours may
    round the last digit differently), and a trailing "..." stands for anything."""
    expected = expected.strip()
    if expected.endswith("..."):
        expected = expected[:-3].rstrip()
        printed = printed[: len(expected)]
    if NUMBER.sub("#", expected) != NUMBER.sub("#", printed.strip()):
        return False
    pairs = zip(NUMBER.findall(expected), NUMBER.findall(printed), strict=True)
    return all(abs(float(a) - float(b)) <= 0.03 for a, b in pairs)


def test_readme_python_examples_run_and_print_what_they_say(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
        printed = capsys.readouterr().out.splitlines()
        expected = re.findall(r"^# prints: (.*)$", block, flags=re.M)
        assert len(printed) == len(expected), (printed, expected)
        for want, got in zip(expected, printed, strict=True):
            assert _matches(want, got), f"README says {want!r}, the example printed {got!r}"


def test_readme_example_learns():
    """The API example's figures are well above chance (0.5 on the balanced phantoms)."""
    text = README.read_text()
    figures = [
        float(v)
        for v in re.findall(r"# prints: accuracy: training (\S+), new phantoms (\S+)", text)[0]
    ]
    assert min(figures) >= 0.85, figures


def test_matches_is_strict_about_words_and_numbers():
    assert _matches("accuracy 0.914, x", "accuracy 0.920, x")
    assert not _matches("accuracy 0.914, x", "accuracy 0.555, x")
    assert not _matches("accuracy 0.914, x", "loss 0.914, x")
    assert _matches("check_grad passed: a, b ...", "check_grad passed: a, b (3 entries)")
