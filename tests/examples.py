"""The example config under policies/ as a newcomer changes it by following the README:
examples turned on, auth enabled, every provider pointed at the fake upstream."""

from __future__ import annotations

import re

from tests.conftest import ROOT

# an example the shipped files keep off: `#` then the line's own YAML indentation
EXAMPLE_LINE = re.compile(r"^#(?=  +\S)", re.M)


def examples_on(text: str) -> str:
    """The file with every example turned on as its header says: the `#` at the start of
    each example line deleted."""
    return EXAMPLE_LINE.sub("", text)


def repoint(config: dict, fake_url: str) -> dict:
    """Every deployment at the fake upstream, with a key: what is tested is the config, not the providers."""
    for model in config["models"]:
        for dep in model["deployments"]:
            if dep["provider"] == "mock":
                continue
            dep["base_url"] = fake_url + "/v1" if dep["provider"] == "openai" else fake_url
            dep["api_key"] = "sk-test-upstream"
    return config


def readme_block(after: str, language: str = "sh") -> str:
    """The README's first code block of `language` after the text `after`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"a {language} block after {after!r}"
    return match.group(1)


def commands(block: str) -> list[str]:
    """A shell block's commands, continuation lines joined, comments kept out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
