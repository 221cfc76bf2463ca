"""What people read: the command line's help, the demo, error messages (issue 11.9, 11.10)."""

import argparse
import subprocess
import sys

import numpy as np
import pytest

from shmpool import NonFiniteError
from shmpool.__main__ import main

PY = sys.executable


def parsers():
    """The top-level parser and each command's, built as main() builds them."""
    captured = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, args=None, namespace=None):
        captured["top"] = self
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            main([])
    finally:
        argparse.ArgumentParser.parse_args = real
    top = captured["top"]
    [sub] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return top, dict(sub.choices)


def test_help_lists_every_command_without_markup():
    r = subprocess.run([PY, "-m", "shmpool", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for command in ("demo", "serve", "cleanup", "soak"):
        assert f"    {command}" in r.stdout
    assert "`" not in r.stdout


@pytest.mark.parametrize("command", ["demo", "serve", "cleanup", "soak"])
def test_every_option_says_what_it_does(command):
    _top, commands = parsers()
    for action in commands[command]._actions:
        if action.dest != "help":
            assert action.help and "`" not in action.help, f"{command} {action.option_strings}"


def test_the_demo_compares_warm_with_warm():
    r = subprocess.run([PY, "-m", "shmpool", "demo", "--workers", "2"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "outliers: [7, 113, 835]"
    assert any("warm" in ln and "in-process numpy" in ln and "x numpy" in ln for ln in lines)
    assert "cold" not in r.stdout


def test_error_text_names_the_class_once(pool):
    with pytest.raises(NonFiniteError) as e:
        pool.detect([1.0, np.nan])
    text = str(e.value)
    assert text.startswith("input holds 1 non-finite") and "NonFiniteError" not in text
    script = "from shmpool import Pool\nwith Pool(1) as p: p.detect([1.0, float('nan')])"
    r = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert last.count("NonFiniteError") == 1, last
