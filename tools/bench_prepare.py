"""
Throughput and memory of prepare.py on a corpus too big to hold twice: writes a synthetic .jsonl
corpus of --mb megabytes to a temporary folder, runs `python prepare.py` on it, and reports MB/s and
peak RSS.

    python tools/bench_prepare.py --mb=300

Not a test (pytest does not collect it): it takes minutes and all cores.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_corpus(path, mb, seed=0):
    """~4 KB stories of Zipf-distributed made-up words, some lines indented, one per .jsonl row.

    2,000 distinct stories are made and then drawn at random (each with its number in front): making
    every story afresh would take longer than tokenizing it, and SentencePiece caches nothing, so
    repeats cost the same.
    """
    rng = np.random.default_rng(seed)
    syllables = ("ka lo mi ne su ta ri po an el or th st qu é ß ver mon dal ix un be ce go hu ja "
                 "we ya zo fr").split()
    words = np.array(["".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(30000)])
    stories = []
    for _ in range(2000):
        lines = []
        for n in rng.integers(3, 16, size=80):
            ids = np.minimum(rng.zipf(1.2, size=n), len(words)) - 1
            lines.append(" " * int(rng.choice([0, 0, 4, 8])) + " ".join(words[ids])
                         + rng.choice([".", ":", ","]))
        stories.append("\n".join(lines))
    written, i = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < mb * 1e6:
            row = json.dumps({"text": f"{i}\n" + stories[rng.integers(len(stories))]},
                             ensure_ascii=False) + "\n"
            f.write(row)
            written, i = written + len(row.encode("utf-8")), i + 1
    return written


def main(mb=300):
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        start = time.time()
        size = synthetic_corpus(corpus, mb)
        print(f"corpus: {size / 1e6:,.0f} MB of .jsonl written in {time.time() - start:.0f} s",
              flush=True)
        start = time.time()
        subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), f"--input={corpus}",
                        "--dataset=bench", f"--data_dir={tmp}"], check=True, cwd=ROOT)
        wall = time.time() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        meta = json.load(open(os.path.join(tmp, "bench", "meta.json")))
        text = sum(s["bytes"] for s in meta["splits"].values())
        encoding = sum(s["seconds"] for s in meta["splits"].values())
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        print(f"prepare.py: {text / 1e6:,.0f} MB of text -> {tokens:,} tokens; "
              f"tokenizing {text / 1e6 / encoding:.1f} MB/s, "
              f"whole run {wall:.0f} s ({text / 1e6 / wall:.1f} MB/s); peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main(*(int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--mb=")))
