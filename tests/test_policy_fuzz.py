"""Broken policy files: `lockgate check`, start-up and hot reload read them with one
parser and always agree, report `file:line: message` and never a Python traceback,
whatever the edit: random mutations of every shipped policy, and the inputs that once
crashed `check` (a NUL byte, a date that is no date, a complex key, an empty file, an
alias bomb)."""

from __future__ import annotations

import contextlib
import io
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lockgate import create_app
from lockgate.gateway.cli import main as cli
from lockgate.kernel.parsing import ConfigError
from lockgate.middleware import auth, budget, cache, fallback, rewrite, throttle
from tests.conftest import ROOT

PARSERS = {"auth": auth.parse_policy, "throttle": throttle.parse_policy, "budget": budget.parse_policy,
           "cache": cache.parse_policy, "rewrite": rewrite.parse_policy, "fallback": fallback.parse_policy}
PROBLEM = re.compile(r"^\S+?(:\d+)?: .+|^\d+ problems? found$")
MUTATION_TOKENS = [
    b"\x00",
    b"2027-13-45",
    b"? [a]\n: b",
    b"&a x",
    b"*nothere",
    b"{",
    b"]",
    b"- ",
    b":",
    b"\t",
    b"'",
    b'"',
    b"!!python/object:os.system",
    b"\xff",
    b"1e999",
    b"null",
    b"-1",
    b"~",
]
ALIAS_BOMB = b"a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + b"".join(
    b"%s: &%s [%s]\n" % (bytes([98 + i]), bytes([98 + i]), b", ".join([b"*" + bytes([97 + i])] * 10)) for i in range(9)
)


def mutate(text: bytes, rng: random.Random) -> bytes:
    lines = text.split(b"\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        choice = rng.randrange(5)
        if choice == 0:
            del lines[i]
        elif choice == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif choice == 2 and lines[i]:
            at = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:at] + rng.choice(MUTATION_TOKENS) + lines[i][at:]
        elif choice == 3:
            lines[i] = b" " * rng.randint(0, 5) + lines[i].lstrip()
        else:
            lines[i] = lines[i].replace(b": ", b": " + rng.choice(MUTATION_TOKENS) + b" ", 1)
        if not lines:
            lines = [b""]
    return b"\n".join(lines)


def check_output(config: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli(["check", "--config", str(config)])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue() + err.getvalue()


def shipped(workdir: Path) -> Path:
    """policies/ as shipped, with all six middlewares mounted; its gateway.yaml."""
    workdir.mkdir(parents=True, exist_ok=True)
    for path in (ROOT / "policies").glob("*.yaml"):
        shutil.copy(path, workdir / path.name)
    gateway = yaml.safe_load((ROOT / "policies" / "gateway.yaml").read_text())
    gateway["store"] = {"backend": "memory"}
    gateway["middleware"] = [{name: f"{name}.yaml"} for name in ("auth", "throttle", "budget", "rewrite", "cache", "fallback")]
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(gateway))
    return workdir / "gateway.yaml"


def verdicts(kind: str, text: bytes, workdir: Path) -> tuple[bool, bool, bool, str]:
    """(check accepts, start-up accepts, reload accepts, what check said): the policy
    `kind` holds `text`, beside the other shipped files."""
    config = shipped(workdir / "cold")
    (workdir / "cold" / f"{kind}.yaml").write_bytes(text)
    code, said = check_output(config)
    try:
        create_app(str(config))
        startup = True
    except ConfigError:
        startup = False
    running = create_app(str(shipped(workdir / "live")))
    policy = next(instance.policy for name, instance in running.state.live.mounted.entries if name == kind)
    (workdir / "live" / f"{kind}.yaml").write_bytes(text)
    policy.reload()
    return code == 0, startup, policy.last_error is None, said


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_random_mutations_check_startup_and_reload_agree(kind, tmp_path):
    rng = random.Random(f"lockgate-{kind}")
    original = (ROOT / "policies" / f"{kind}.yaml").read_bytes()
    accepted = refused = 0
    for n in range(25):
        text = mutate(original, rng)
        workdir = tmp_path / str(n)
        workdir.mkdir()
        check, startup, reload_ok, said = verdicts(kind, text, workdir)
        assert check == startup == reload_ok, (text, said)
        assert "Traceback" not in said
        if not check:
            refused += 1
            problems = [line for line in said.splitlines() if line.strip()]
            assert problems and all(PROBLEM.match(line) for line in problems), said
        else:
            accepted += 1
    assert refused >= 5, "the mutations do break files"


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"keys: []\n\x00\n", "U+0000"),
        (b"keys:\n  - {id: a, sha256: '" + b"a" * 64 + b"', expires: 2027-13-45}\n", "expires must be a date"),
        (b"? [a]\n: b\n", "a mapping key must be a plain value"),
        (b"", "the file is empty"),
        (b"   \n\n", "the file is empty"),
        (ALIAS_BOMB, "expands to more than"),
        (b"a: " + b"[" * 100 + b"]" * 100 + b"\n", "nested deeper than"),
        (b"keys: [\xff]\n", "not UTF-8"),
        (b"!!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    ],
    ids=["nul", "bad-date", "complex-key", "empty", "blank", "alias-bomb", "deep", "not-utf8", "python-tag"],
)
def test_what_once_crashed_check_is_a_file_line_problem_everywhere(text, expected, tmp_path):
    check, startup, reload_ok, said = verdicts("auth", text, tmp_path)
    assert (check, startup, reload_ok) == (False, False, False)
    assert expected in said and "Traceback" not in said
    assert all(PROBLEM.match(line) for line in said.splitlines() if line.strip())
    # and through the real command, as an operator runs it
    proc = subprocess.run(
        [sys.executable, "-m", "lockgate.gateway.cli", "check", "--config", str(tmp_path / "cold" / "gateway.yaml")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout and expected in proc.stderr
