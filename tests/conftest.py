import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The scripts live at the top of the repo; tests import them as modules.
sys.path.insert(0, str(ROOT))

# model.py loads OpenBLAS before mlx.core, as every script does; importing it first makes that so
# for every test module, whatever it imports first.
import model  # noqa: E402, F401

ON_CPU = model.cpu.ON_CPU
# Tests of the CPU's own machinery (worker threads, OpenBLAS) skip on a GPU; every other test runs
# on any backend, and those that compare numbers pin --dtype=float32.
cpu_only = pytest.mark.skipif(not ON_CPU, reason="the CPU fast path (cpu.py) runs on the CPU only")

WORDS = ("the cat sat on a mat while dogs ran far away from home and every bird sang loud songs "
         "of joy under trees near rivers where fish swim fast").split()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """data/tiny/ prepared once from 40 small documents (vocabulary 300); copy it with
    `workspace`."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "corpus").mkdir()
    for d in range(40):
        words = [WORDS[(d * 7 + i * i) % len(WORDS)] for i in range(300)]
        (folder / "corpus" / f"doc{d}.txt").write_text(" ".join(words)
                                                       + f"\n\n  indented line {d}\n")
    subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--input=corpus", "--dataset=tiny",
                    "--vocab_size=300", "--val_fraction=0.1"],
                   cwd=folder, check=True, capture_output=True, timeout=300)
    return folder / "data"


def workspace(tmp_path_factory, tiny_data, name="work"):
    """A fresh folder holding its own copy of data/tiny/, to run the scripts in."""
    work = tmp_path_factory.mktemp(name)
    shutil.copytree(tiny_data, work / "data")
    return work


def losses(out_dir):
    """{iteration: training loss} from a run's log.jsonl."""
    records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in records if "loss" in r}
