"""
Runs side by side: one chart of their val curves against tokens seen, and a table of what differs.

Reads each run folder's config.json (its train_settings) and log.jsonl; writes the chart to --svg
and prints, for each run, its whole-val bits per byte (train.py's last line), iterations,
parameters and training time, under the settings that differ between the runs.

    python train.py --out_dir=out-a && python train.py --out_dir=out-b --n_kv_heads=2
    python compare.py out-a out-b                  # -> compare.svg, and the table
    python compare.py out-* --svg=runs.svg
"""
import os
import sys

from model import Model, ModelArgs  # first: model.py loads cpu.py, which must come before mlx.core
import files
import plot
from configurator import configure

# -----------------------------------------------------------------------------
svg = "compare.svg"  # where the chart goes
# -----------------------------------------------------------------------------
folders = [a for a in sys.argv[1:] if not a.startswith("-")]
configure(globals(), [a for a in sys.argv[1:] if a.startswith("-")], echo=sys.stderr)
if not folders:
    sys.exit("error: name the run folders to compare: python compare.py out-a out-b")
COLOURS = ["#1f77b4", "#e6550d", "#31a354", "#756bb1", "#636363", "#e7ba52", "#d6616b"]


def read_run(path):
    if not os.path.isfile(os.path.join(path, "log.jsonl")):
        sys.exit(f"error: {path!r} has no log.jsonl: is it a folder that train.py wrote?")
    config, records = files.read_config(path), files.log_records(os.path.join(path, "log.jsonl"))[0]
    settings = config.get("train_settings", {})
    per_iter = settings.get("tokens_per_iter") or (  # older runs: one process's
        settings["batch_size"] * settings["gradient_accumulation_steps"] * settings["max_seq_len"])
    train = [r for r in records if "tokens_per_sec" in r]
    seconds = sum((b["iter"] - a["iter"]) * per_iter / b["tokens_per_sec"]
                  for a, b in zip([{"iter": 0}] + train, train))
    bpb = next((r["val_bpb_full"] for r in reversed(records) if "val_bpb_full" in r), None)
    return dict(name=path, settings=settings, bpb=bpb, minutes=seconds / 60,
                iters=max((r["iter"] for r in records), default=0),
                params=Model(ModelArgs.from_config(config)).num_params(),
                val=[(it * per_iter, loss) for it, loss in plot.points(records, "val_loss")])


runs = [read_run(path) for path in folders]

# the table: what differs, then each run's numbers
keys = sorted({k for r in runs for k in r["settings"]} - {"out_dir", "init_from"})
differ = [k for k in keys if len({repr(r["settings"].get(k)) for r in runs}) > 1]
rows = [["run", *differ, "bits/byte", "iterations", "params", "train min"]]
for r in runs:
    rows.append([r["name"], *(str(r["settings"].get(k, "-")) for k in differ),
                 "-" if r["bpb"] is None else f"{r['bpb']:.3f}", f"{r['iters']:,}",
                 f"{r['params'] / 1e6:.2f}M", f"{r['minutes']:.1f}"])
widths = [max(map(len, column)) for column in zip(*rows)]
for row in rows:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
if not differ:
    print("(the runs have the same settings)")

# the chart: each run's eval val loss against tokens seen
curves = [("run", r["name"], COLOURS[i % len(COLOURS)], 2, True, r["val"])
          for i, r in enumerate(runs)]
chart = plot.chart("val loss against tokens seen", curves, "val loss (nats/token)", "tokens")
files.write_atomic(svg, chart.encode())
print(f"wrote {svg}")
