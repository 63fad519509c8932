"""`make help` is where a new user looks first: it must list the paper's one-command targets."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.helpers.train_utils import REPO

PAPER_TARGETS = [f"reproduce-table{i}" for i in range(1, 6)] + [
    "reproduce-fig2",
    "reproduce-fig4a",
    "reproduce-fig4b",
]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_help_lists_every_paper_target_with_its_description():
    out = subprocess.run(
        ["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)  # colours off
    listed = set(text.split())
    assert [
        t
        for t in [*PAPER_TARGETS, "reproduce-samples", "smoke", "quickstart", "train", "test"]
        if t not in listed
    ] == []
    assert (
        "train what is missing, evaluate, render the table" in text
    )  # the several-target rule's description
