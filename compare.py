"""
Runs side by side: one chart of their val curves against tokens seen, and a table of what differs.

Reads each run folder's config.json (its train_settings) and log.jsonl; writes the chart to --svg
and prints, for each run, its whole-val bits per byte (train.py's last line), iterations,
parameters and training time, under the settings that differ between the runs.

    python train.py --out_dir=out-a && python train.py --out_dir=out-b --n_kv_heads=2
    python compare.py out-a out-b                  # -> compare.svg, and the table
    python compare.py out-* --svg=runs.svg
"""
import math
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
    final = next((r for r in reversed(records) if "val_bpb_full" in r), {})
    return dict(name=path, settings=settings, per_iter=per_iter, final=final, minutes=seconds / 60,
                iters=max((r["iter"] for r in records), default=0),
                params=Model(ModelArgs.from_config(config)).num_params(),
                val=[(r["iter"] * per_iter, r["val_loss"]) for r in records if "val_loss" in r])


runs = [read_run(path) for path in folders]

# the table: what differs, then each run's numbers
keys = sorted({k for r in runs for k in r["settings"]} - {"out_dir", "init_from"})
differ = [k for k in keys if len({repr(r["settings"].get(k)) for r in runs}) > 1]
rows = [["run", *differ, "bits/byte", "iterations", "params", "train min"]]
for r in runs:
    bpb = r["final"].get("val_bpb_full")
    rows.append([r["name"], *(str(r["settings"].get(k, "-")) for k in differ),
                 f"{bpb:.3f}" if bpb is not None else "-", f"{r['iters']:,}",
                 f"{r['params'] / 1e6:.2f}M", f"{r['minutes']:.1f}"])
widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
for row in rows:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
if not differ:
    print("(the runs have the same settings)")

# the chart: each run's eval val loss against tokens seen
pts = [p for r in runs for p in r["val"] if math.isfinite(p[1])]
W, H, (LEFT, RIGHT, TOP, BOTTOM) = plot.W, plot.H, (70, plot.W - 30, 50, plot.H - 60)
out = [f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{W}" height="{H}" '
       f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       plot.text(W / 2, 26, "val loss against tokens seen", cls="title", extra=' font-size="15"')]
if pts:
    xticks = plot.ticks(0, max(x for x, _ in pts), integer=True)[0]
    yticks, ystep = plot.ticks(min(y for _, y in pts), max(y for _, y in pts))
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]
    sx = lambda x: LEFT + (x - x0) / (x1 - x0) * (RIGHT - LEFT)  # noqa: E731
    sy = lambda y: BOTTOM - (y - y0) / (y1 - y0) * (BOTTOM - TOP)  # noqa: E731
    for t in yticks:
        out += [f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{RIGHT}" y2="{sy(t):.1f}" stroke="#eee"/>',
                plot.text(LEFT - 6, sy(t) + 4, plot.fmt(t, ystep), "end", "y-tick")]
    for t in xticks:
        out += [f'<line x1="{sx(t):.1f}" y1="{TOP}" x2="{sx(t):.1f}" y2="{BOTTOM}" stroke="#eee"/>',
                plot.text(sx(t), BOTTOM + 16, plot.si(t), cls="x-tick")]
    out += [f'<polyline points="{LEFT},{TOP} {LEFT},{BOTTOM} {RIGHT},{BOTTOM}" fill="none" '
            'stroke="#333"/>', plot.text((LEFT + RIGHT) / 2, BOTTOM + 36, "tokens seen",
                                         cls="axis-title"),
            plot.text(18, (TOP + BOTTOM) / 2, "val loss (nats/token)", cls="axis-title",
                      extra=f' transform="rotate(-90 18 {(TOP + BOTTOM) / 2})"')]
    for i, r in enumerate(runs):
        colour, xy = COLOURS[i % len(COLOURS)], [(sx(x), sy(y)) for x, y in r["val"]]
        out += [f'<polyline class="run" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in xy)}" '
                f'fill="none" stroke="{colour}" stroke-width="2"/>',
                *(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in xy),
                f'<line x1="{RIGHT - 190}" y1="{TOP + 10 + 16 * i}" x2="{RIGHT - 166}" '
                f'y2="{TOP + 10 + 16 * i}" stroke="{colour}" stroke-width="3"/>',
                plot.text(RIGHT - 160, TOP + 14 + 16 * i, r["name"], "start", "legend")]
files.write_atomic(svg, "\n".join(out + ["</svg>\n"]).encode())
print(f"wrote {svg}")
