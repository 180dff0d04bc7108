"""plot.py: the loss chart train.py writes as out_dir/loss.svg, read back as the XML a browser
draws."""
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from plot import loss_svg

ROOT = Path(__file__).resolve().parent.parent

NS = "{http://www.w3.org/2000/svg}"


def run_log(n_iters=500, eval_interval=100):
    """log.jsonl of a run whose loss falls from 8 to 3.6, noisy per iteration; val loss rises at the
    last eval."""
    records = []
    for it in range(1, n_iters + 1):
        loss = 3.6 + 4.4 * math.exp(-it / 80)
        records.append({"iter": it, "loss": loss + 0.05 * (-1) ** it, "lr": 1e-3,
                        "tokens_per_sec": 1e4})
        if it % eval_interval == 0:
            val = loss + 0.1 + (0.3 if it == n_iters else 0)
            records.append({"iter": it, "train_loss": loss, "val_loss": val,
                            "val_ppl": math.exp(val), "val_bpb": val / math.log(2) * 0.3})
    return records


def parse(svg):
    root = ET.fromstring(svg)  # raises on anything a browser would refuse as XML
    # the xmlns attribute: without it a browser shows the file as text
    assert root.tag == NS + "svg"
    return root


def points(root, name):
    (line,) = [e for e in root.iter(NS + "polyline") if e.get("class") == name]
    return [tuple(map(float, p.split(","))) for p in line.get("points").split()]


def texts(root, cls=None):
    return [e.text for e in root.iter(NS + "text") if cls is None or e.get("class") == cls]


def labels_by(root, cls, coord):
    return {float(e.get(coord)): e.text for e in root.iter(NS + "text") if e.get("class") == cls}


def assert_higher_loss_higher_up(losses, ys):
    for a, ya in zip(losses, ys):
        for b, yb in zip(losses, ys):
            if a > b + 0.01:  # coordinates are written to a tenth of a pixel, about 0.002 nats here
                assert ya < yb, (a, b, ya, yb)  # SVG's y grows downwards


def test_eval_curves_have_a_point_per_eval_left_to_right_and_higher_loss_higher_up():
    records = run_log()
    evals = [r for r in records if "val_loss" in r]
    root = parse(loss_svg(records, 16384))
    train, val = points(root, "eval-train"), points(root, "eval-val")
    assert len(train) == len(val) == len(evals) == 5
    for pts in train, val:
        xs = [x for x, _ in pts]
        gaps = [b - a for a, b in zip(xs, xs[1:])]
        # evals 100 iterations apart
        assert all(g > 0 for g in gaps) and max(gaps) - min(gaps) < 0.5
    x_of = {label: x for x, label in labels_by(root, "x-tick", "x").items()}
    for r, (x, _) in zip(evals, val):  # each eval stands over its iteration's label
        assert abs(x_of[str(r["iter"])] - x) < 0.2
    # Across both curves, so they share one scale; the val loss rises at the end, so sorting is not
    # enough.
    assert_higher_loss_higher_up([r["train_loss"] for r in evals] + [r["val_loss"] for r in evals],
                                 [y for _, y in train + val])


def test_training_loss_curve_has_a_point_per_training_line():
    records = run_log(n_iters=200)
    train_lines = [r for r in records if "loss" in r]
    pts = points(parse(loss_svg(records, 16384)), "train-loss")
    assert len(pts) == len(train_lines)
    assert [x for x, _ in pts] == sorted(x for x, _ in pts)
    assert_higher_loss_higher_up([r["loss"] for r in train_lines], [y for _, y in pts])


def test_a_long_run_is_thinned_to_a_small_file():
    records = [{"iter": it, "loss": 3 + 5 / it} for it in range(1, 100_001)]
    svg = loss_svg(records, 16384)
    pts = points(parse(svg), "train-loss")
    assert 100 < len(pts) <= 1000 and len(svg) < 100_000
    assert [x for x, _ in pts] == sorted(x for x, _ in pts)


def test_axis_titles_legend_and_title_line():
    records = run_log()
    found = texts(parse(loss_svg(records, 16384, title="tinyshakespeare")))
    for label in "iteration", "tokens", "loss (nats/token)", "val bits/byte", "train loss", \
            "eval train loss", "eval val loss":
        assert label in found
    last = records[-1]
    (title,) = texts(parse(loss_svg(records, 16384, title="tinyshakespeare")), "title")
    assert ("tinyshakespeare" in title and f"{last['val_loss']:.3f}" in title
            and f"{last['val_bpb']:.3f}" in title)


def test_loss_ticks_are_round_cover_the_data_and_match_the_curves():
    records = run_log()
    root = parse(loss_svg(records, 16384))
    labels = labels_by(root, "y-tick", "y")
    ticks = {y: float(s) for y, s in labels.items()}
    values = sorted(ticks.values())
    step = values[1] - values[0]
    assert 4 <= len(values) <= 12 and step / 10 ** math.floor(math.log10(step)) in (1, 2, 5)
    assert (all(abs(v / step - round(v / step)) < 1e-9 for v in values)
            and max(map(len, labels.values())) <= 4)
    losses = [r.get("loss", r.get("val_loss")) for r in records]
    assert values[0] <= min(losses) and values[-1] >= max(losses)
    # A point drawn for loss L lies where the tick labels say L is (labels sit a few pixels below
    # their line).
    (y_lo, v_lo), (y_hi, v_hi) = min(ticks.items()), max(ticks.items())
    for r, (_, y) in zip([r for r in records if "val_loss" in r], points(root, "eval-val")):
        assert abs(y_lo + (r["val_loss"] - v_lo) / (v_hi - v_lo) * (y_hi - y_lo) - y) < 6


def test_token_labels_are_iterations_times_tokens_per_iter():
    root = parse(loss_svg(run_log(), 3400))
    iters, tokens = labels_by(root, "x-tick", "x"), labels_by(root, "token-tick", "x")
    # one scale: each token label stands under its iteration label
    assert iters.keys() == tokens.keys()
    assert {iters[x]: tokens[x] for x in iters} == {"0": "0", "100": "340k", "200": "680k",
                                                    "300": "1.02M", "400": "1.36M", "500": "1.7M"}


def test_right_axis_labels_are_the_bpb_of_the_loss_ticks():
    records = run_log()
    k = records[-1]["val_bpb"] / records[-1]["val_loss"]
    root = parse(loss_svg(records, 16384))
    loss, bpb = labels_by(root, "y-tick", "y"), labels_by(root, "bpb-tick", "y")
    assert len(bpb) >= 4 and loss.keys() == bpb.keys()
    for y in loss:
        assert math.isclose(float(bpb[y]), float(loss[y]) * k, rel_tol=5e-3, abs_tol=5e-3)


def test_no_right_axis_before_the_first_eval():
    root = parse(loss_svg([r for r in run_log() if "loss" in r], 16384))
    assert not texts(root, "bpb-tick") and "val bits/byte" not in texts(root)
    assert len(points(root, "train-loss")) == 500


def test_no_data_yet():
    for records in [], [{"iter": 1, "loss": math.nan}], \
            [{"iter": 1}, {"lr": 1e-3}, {"iter": "?", "loss": 3}]:
        root = parse(loss_svg(records, 16384, title="run"))
        assert "no data yet" in texts(root)
        assert not list(root.iter(NS + "polyline"))


def test_a_single_record_is_drawn_as_a_point():
    for record, name in ({"iter": 1, "loss": 8.3}, "train-loss"), \
            ({"iter": 0, "train_loss": 9.0, "val_loss": 9.1, "val_bpb": 3.5}, "eval-val"):
        root = parse(loss_svg([record], 16384))
        assert len(points(root, name)) == 1
        # a lone point draws no line
        assert [c for c in root.iter(NS + "circle") if c.get("class") == name]
        assert len(set(texts(root, "y-tick"))) >= 2
        assert all(float(s).is_integer() for s in texts(root, "x-tick"))  # no iteration 0.2


def test_all_equal_losses_get_a_range_around_them():
    root = parse(loss_svg([{"iter": it, "loss": 5.0} for it in range(1, 11)], 16384))
    labels = texts(root, "y-tick")
    ticks = sorted(map(float, labels))
    assert ticks[0] < 5.0 < ticks[-1] and len(ticks) >= 3
    assert max(map(len, labels)) <= 4  # 4.6, not 4.6000000000000005
    assert len({y for _, y in points(root, "train-loss")}) == 1


def test_nan_and_inf_are_skipped():
    records = run_log()
    bad = [math.nan, math.inf, -math.inf]
    for i, v in zip((10, 20, 30), bad):
        records[i]["loss"] = v
    records.insert(150, {"iter": 150, "train_loss": math.nan, "val_loss": math.inf,
                         "val_bpb": math.nan})
    svg = loss_svg(records, 16384)
    root = parse(svg)
    assert len(points(root, "train-loss")) == 500 - 3
    assert len(points(root, "eval-val")) == 5
    assert "nan" not in svg.lower() and "inf" not in svg.lower()


def test_huge_range_and_odd_values_never_raise():
    for records in ([{"iter": 1, "loss": 1e6}, {"iter": 2, "loss": 3.0}],
                    [{"iter": 1, "loss": 1e-310}],
                    [{"iter": 10**9, "loss": -2.0}, {"iter": 0, "loss": 1e200}],
                    [{"iter": 1, "loss": 1e308}],
                    [{"iter": 5, "train_loss": 3.0, "val_loss": 0.0, "val_bpb": 1.0}],
                    ["junk", None, {}]):
        parse(loss_svg(records, 16384))
    root = parse(loss_svg([{"iter": 1, "loss": 1e4}]
                          + [{"iter": it, "loss": 3.5} for it in range(2, 50)], 0))
    assert "tokens" not in texts(root) and max(float(s) for s in texts(root, "y-tick")) >= 1e4


def test_standalone_svg_1_1_with_plain_elements_only():
    svg = loss_svg(run_log(), 16384, title='a <b> & "c"')
    root = parse(svg)
    assert (root.get("version") == "1.1" and root.get("width") == "800"
            and root.get("height") == "450")
    assert {e.tag[len(NS):] for e in root.iter()} <= {"svg", "rect", "line", "polyline", "text",
                                                      "circle"}
    assert 'a <b> & "c"' in texts(root, "title")[0] and "href" not in svg


def test_compare_draws_the_runs_side_by_side_and_tables_what_differs(tmp_path):
    from model import ModelArgs
    for name, kv, per_iter, bpb in (("a", 8, 2048, 1.9), ("b", 2, 4096, 1.8)):
        run = tmp_path / name
        run.mkdir()
        settings = {"batch_size": 16, "gradient_accumulation_steps": 1, "max_seq_len": 128,
                    "n_kv_heads": kv, "tokens_per_iter": per_iter, "out_dir": name}
        config = {**ModelArgs(n_kv_heads=kv).to_config(), "train_settings": settings}
        (run / "config.json").write_text(json.dumps(config))
        records = run_log(n_iters=300) + [{"iter": 300, "val_loss_full": 3.7, "val_bpb_full": bpb}]
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    r = subprocess.run([sys.executable, str(ROOT / "compare.py"), "a", "b", "--svg=both.svg"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = [line.split() for line in r.stdout.splitlines()]
    # the settings that differ, and only those; tokens_per_iter is how much a run has seen
    assert table[0] == ["run", "n_kv_heads", "tokens_per_iter", "bits/byte", "iterations",
                        "params", "train", "min"]
    assert table[1][:5] == ["a", "8", "2048", "1.900", "300"] and table[2][:5] == [
        "b", "2", "4096", "1.800", "300"]
    assert float(table[1][5][:-1]) > float(table[2][5][:-1])  # fewer kv heads, fewer parameters
    assert float(table[1][6]) == pytest.approx(300 * 2048 / 1e4 / 60, abs=0.05)  # minutes
    curves = [e.get("points").split() for e in parse((tmp_path / "both.svg").read_text()).iter(
        NS + "polyline") if e.get("class") == "run"]
    assert [len(c) for c in curves] == [3, 3]
    # b saw twice the tokens by its last eval: its curve ends further right
    assert float(curves[1][-1].split(",")[0]) > float(curves[0][-1].split(",")[0])
    r = subprocess.run([sys.executable, str(ROOT / "compare.py"), "a", "nowhere"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "error: 'nowhere' has no log.jsonl: is it a folder that train.py wrote?"]
