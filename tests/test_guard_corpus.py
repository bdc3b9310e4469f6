"""The guard's detectors measured on a labeled corpus (tests/data/guard/corpus.jsonl, made
by make_corpus.py beside it): synthetic personal data and secrets in prose, code, JSON,
CSV and CJK text, and look-alikes that must not be found. Each detector's precision and
recall must stay at or above what README "Guard" publishes (FLOORS below)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lockgate.middleware.guard_detectors import BUILTIN, Text

CORPUS = Path(__file__).parent / "data" / "guard" / "corpus.jsonl"
# the figures README "Guard" publishes (measured: see `measure`), as floors
FLOORS = {
    "email": (1.0, 0.974),
    "phone": (1.0, 0.952),
    "credit_card": (0.986, 0.961),
    "iban": (1.0, 1.0),
    "us_ssn": (1.0, 0.933),
    "ip_address": (1.0, 1.0),
    "secret": (1.0, 0.916),
}


def measure() -> dict[str, tuple[float, float, int, int, int]]:
    """detector -> (precision, recall, true positives, false positives, false negatives)."""
    lines = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    figures = {}
    for name, detector in BUILTIN.items():
        tp = fp = fn = 0
        for line in lines:
            text = line["text"]
            wanted = []
            for label, value in line["labels"]:
                if label == name:
                    start = text.index(value)
                    wanted.append((start, start + len(value)))
            found = sorted(set(detector.find(Text(text))))
            hit = [any(s < e2 and s2 < e for s2, e2 in found) for s, e in wanted]
            tp += sum(hit)
            fn += len(hit) - sum(hit)
            fp += sum(1 for s2, e2 in found if not any(s < e2 and s2 < e for s, e in wanted))
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        figures[name] = (precision, recall, tp, fp, fn)
    return figures


FIGURES = measure()


@pytest.mark.parametrize("detector", list(FLOORS))
def test_precision_and_recall_stay_at_the_published_figures(detector: str) -> None:
    precision, recall, tp, fp, fn = FIGURES[detector]
    floor_precision, floor_recall = FLOORS[detector]
    measured = f"{detector}: precision {precision:.3f}, recall {recall:.3f} ({tp} found, {fp} wrong, {fn} missed)"
    assert precision >= floor_precision and recall >= floor_recall, measured


if __name__ == "__main__":
    for name, (precision, recall, tp, fp, fn) in FIGURES.items():
        print(f"| `{name}` | {tp + fn} | {precision:.3f} | {recall:.3f} | {fp} | {fn} |")
