"""The example config under policies/ as a newcomer changes it by following the README:
examples turned on, auth enabled, every provider pointed at the fake upstream."""

from __future__ import annotations

import re

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
