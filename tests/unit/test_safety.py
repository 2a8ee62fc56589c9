"""Nothing in the project unpickles: results are safetensors and JSON."""

import re

from helpers import REPO

SOURCES = sorted((REPO / "analysis").glob("*.py")) + [REPO / "paper" / "index.qmd"]


def test_no_pickle_loading_anywhere():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"\bimport pickle\b|\bpickle\.load|\bjoblib\.load|allow_pickle\s*=\s*True", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"

