r"""
Quality per minute: runs a preset end to end as a user would (prepare.py, then train.py) and prints
the wall time and the bits per byte over the whole val split (train.py's final val_bpb_full). Not a
test: minutes per run, and it wants the whole machine.

    python tools/bench_quality.py  # the TinyShakespeare preset and the default
    python tools/bench_quality.py --runs=tinyshakespeare \
        --train_args="--optimizer=muon --max_minutes=8"
    # a local copy instead of the download:
    python tools/bench_quality.py --url=file:///path/to/tinyshakespeare.txt

Reads nothing of yours; writes temporary folders only.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
# which: tinyshakespeare (config/tinyshakespeare.py), default (train.py's own)
runs = "tinyshakespeare,default"
train_args = ""  # extra train.py flags for every run, space separated, e.g. "--optimizer=muon"
# where prepare.py gets TinyShakespeare (a mirror, or file:///...); empty: its default download
url = ""
# -----------------------------------------------------------------------------
configure(globals())
RUNS = {"tinyshakespeare": (["--dataset=tinyshakespeare"], ["config/tinyshakespeare.py"]),
        "default": ([], [])}
if unknown := set(runs.split(",")) - set(RUNS):
    sys.exit(f"error: --runs={runs}: unknown {', '.join(sorted(unknown))}; "
             f"pick from {', '.join(RUNS)}")


def timed(cmd, cwd):
    start = time.perf_counter()
    r = subprocess.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: "
                 f"{(r.stderr.strip().splitlines() or ['(no message)'])[-1]}")
    return time.perf_counter() - start


for name in runs.split(","):
    prepare_args, preset = RUNS[name]
    with tempfile.TemporaryDirectory() as tmp:
        mirror = [f"--url={url}"] if url and name == "tinyshakespeare" else []
        t_prepare = timed([os.path.join(ROOT, "prepare.py"), *prepare_args, *mirror,
                           f"--data_dir={tmp}/data"], ROOT)
        t_train = timed([os.path.join(ROOT, "train.py"), *preset, f"--data_dir={tmp}/data",
                         f"--out_dir={tmp}/out", *train_args.split()], ROOT)
        log = [json.loads(line) for line in open(f"{tmp}/out/log.jsonl")]
        final = next(r for r in reversed(log) if "val_bpb_full" in r)
        print(f"{name}: prepare {t_prepare:.0f} s + train {t_train:.0f} s = "
              f"{(t_prepare + t_train) / 60:.1f} min, "
              f"{final['iter']} iterations, whole val split ({final['val_tokens_full']:,} tokens): "
              f"val loss {final['val_loss_full']:.4f}, {final['val_bpb_full']:.3f} bits/byte",
              flush=True)
