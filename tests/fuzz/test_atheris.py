"""A short coverage-guided run (atheris, libFuzzer) of ``decoders.py`` over a copy of the
stored corpus (reliability reference B4): no decoder may fail other than with the refusals
the edge answers as client errors."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUNS = 30_000

pytestmark = pytest.mark.skipif(
    not (platform.system() == "Linux" and platform.machine() == "x86_64"),
    reason="atheris ships wheels for Linux x86_64 only",
)


def test_the_request_decoders_survive_a_fuzzing_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(HERE / "corpus", corpus)  # libFuzzer adds what it finds to the first dir
    seeds = len(list(corpus.iterdir()))
    assert seeds >= 10
    result = subprocess.run(
        [
            sys.executable,
            str(HERE / "decoders.py"),
            str(corpus),
            f"-atheris_runs={RUNS}",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    log = result.stderr[-6000:]
    assert result.returncode == 0, f"a decoder failed on an input (see the artifact):\n{log}"
    assert f"Done {RUNS} " in result.stderr, log
    assert len(list(corpus.iterdir())) > seeds, "the run found no new input: nothing was fuzzed"
