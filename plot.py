"""
Charts as plain SVG text, no plotting library, so they work wherever train.py does: loss_svg draws a
run's log.jsonl (train.py rewrites out_dir/loss.svg at every eval, for a browser tab), chart any
curves on those axes (compare.py), attention_svg generate.py --attention. By hand, loss.svg's text
is plot.loss_svg(map(json.loads, open("out/log.jsonl")), tokens_per_iter).
"""
import math
from xml.sax.saxutils import escape

W, H = 800, 450
LEFT, RIGHT, TOP, BOTTOM = 70, W - 70, 50, H - 60  # the plot area; the margins hold the labels
CURVES = {  # class: (log.jsonl key, legend, colour, line width, a dot a point: evals are few)
    "train-loss": ("loss", "train loss", "#9ecae1", 1, False),
    "eval-train": ("train_loss", "eval train loss", "#1f77b4", 2, True),
    "eval-val": ("val_loss", "eval val loss", "#e6550d", 2, True)}
SVG = ('<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}"{box} '
       'font-family="sans-serif" font-size="{px}">\n<rect width="{w}" height="{h}" fill="white"/>')


def points(records, *keys):
    """Yield (iter, *values) of each record whose iter and keys are numbers that can be drawn: not
    missing, NaN, inf, nor so near the float limit that scaling would overflow (it never raises)."""
    for r in records:
        try:
            p = tuple(float(r[k]) for k in ("iter", *keys))
        except (KeyError, TypeError, ValueError):
            continue
        if all(abs(v) < 1e300 for v in p):  # False for NaN too
            yield p


def _thin(pts):
    # A point per logged iteration makes a long run's SVG megabytes, rewritten at every eval;
    # averaging runs of neighbours keeps it small, where every n-th point would alias the noise.
    n = max(1, -(-len(pts) // 1000))  # at most 1000 points a curve
    chunks = [pts[i:i + n] for i in range(0, len(pts), n)]
    return [(sum(p[0] for p in c) / len(c), sum(p[1] for p in c) / len(c)) for c in chunks]


def ticks(lo, hi, a, b, integer=False):
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi], that step, and
    the map from a value to its pixel: the first tick to a, the last to b."""
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1e-300):  # one value, or all equal: give it room
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / 5
    mag = 10.0 ** math.floor(math.log10(raw))
    step = max(mag * next(m for m in (1, 2, 5, 10) if m * mag >= raw), 1 if integer else 0)
    ts = [k * step for k in range(math.floor(lo / step), math.ceil(hi / step) + 1)]
    ts = [t for t in ts if math.isfinite(t)]
    return ts, step, lambda v: a + (v - ts[0]) / (ts[-1] - ts[0]) * (b - a)


def fmt(v, step):  # the step's decimals: 3.2 and 3.4, not 3.2000000000000002; 10000, not 1e+04
    return f"{v:.{max(0, -math.floor(math.log10(step)))}f}" if abs(v) < 1e6 else f"{v:.3g}"


def si(v):  # 1200000 -> 1.2M, 340000 -> 340k
    for unit in ("", "k", "M", "B", "T"):
        if abs(v) < 999.5 or unit == "T":
            return f"{v:.3g}{unit}"
        v /= 1000


def text(x, y, s, anchor="middle", cls="label", extra=""):
    return (f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>'
            f'{escape(str(s))}</text>')


def loss_svg(records, tokens_per_iter, title=""):
    """The SVG of log.jsonl's records, in order: training lines and evals, by CURVES' keys."""
    records = list(records)
    curves = [(name, *style, list(points(records, key))) for name, (key, *style) in CURVES.items()]
    train = curves[0][-1]  # CURVES' first: the loss of each training line
    evals = [e for e in points(records, "val_loss", "val_bpb") if e[1] and abs(e[2] / e[1]) < 1e300]
    head = [title] if title else []
    if evals:
        it, val, bpb = evals[-1]
        head.append(f"iter {it:.0f}: val loss {val:.3f} nats/token, {bpb:.3f} bits/byte")
    elif train:
        head.append(f"iter {train[-1][0]:.0f}: train loss {train[-1][1]:.3f}")
    # bpb = val_loss / ln 2 * n_tokens / n_bytes is val loss times one constant per run: the right
    # axis relabels the loss ticks with it, in the val curve's colour, instead of a fourth curve.
    right = ("val bits/byte", "bpb-tick", CURVES["eval-val"][2], bpb / val) if evals else None
    return chart(" | ".join(head), curves, "loss (nats/token)", "iteration", tokens_per_iter, right)


def chart(title, curves, y_title, x_title, tokens_per_x=0, right=None):
    """The SVG of curves, (class, legend, colour, width, dots, points) each, on one pair of axes;
    tokens_per_x adds a row of x labels (tokens seen), right (title, class, colour, factor) a y
    scale of tick * factor at the right."""
    out = [SVG.format(w=W, h=H, box=f' viewBox="0 0 {W} {H}"', px=12),
           text(W / 2, 26, title, cls="title", extra=' font-size="15"')]
    curves = [(*c[:-1], _thin(c[-1])) for c in curves if c[-1]]
    if not curves:
        return "\n".join(out + [text(W / 2, H / 2, "no data yet", extra=' fill="#888"'),
                                "</svg>\n"])
    xs, ys = zip(*(p for c in curves for p in c[-1]))
    # x starts at 0, so the chart also shows how far along a run is.
    xticks, _, sx = ticks(min(0, min(xs)), max(xs), LEFT, RIGHT, integer=True)
    yticks, ystep, sy = ticks(min(ys), max(ys), BOTTOM, TOP)
    mid, grey = (TOP + BOTTOM) / 2, ' fill="#666"'
    for t in yticks:
        out += [f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{RIGHT}" y2="{sy(t):.1f}" stroke="#eee"/>',
                text(LEFT - 6, sy(t) + 4, fmt(t, ystep), "end", "y-tick")]
    for t in xticks:
        out += [f'<line x1="{sx(t):.1f}" y1="{TOP}" x2="{sx(t):.1f}" y2="{BOTTOM}" stroke="#eee"/>',
                text(sx(t), BOTTOM + 16, si(t), cls="x-tick")]
        if tokens_per_x:
            out.append(text(sx(t), BOTTOM + 32, si(t * tokens_per_x), cls="token-tick", extra=grey))
    # The titles of the two x scales head their rows of labels, like a table.
    out += [f'<polyline points="{LEFT},{TOP} {LEFT},{BOTTOM} {RIGHT},{BOTTOM}" fill="none" '
            'stroke="#333"/>', text(LEFT - 10, BOTTOM + 16, x_title, "end", "axis-title"),
            text(18, mid, y_title, cls="axis-title", extra=f' transform="rotate(-90 18 {mid})"')]
    if tokens_per_x:
        out.append(text(LEFT - 10, BOTTOM + 32, "tokens", "end", "axis-title", grey))
    if right:
        right_title, cls, colour, factor = right
        out += [f'<line x1="{RIGHT}" y1="{TOP}" x2="{RIGHT}" y2="{BOTTOM}" stroke="{colour}"/>',
                text(W - 14, mid, right_title, cls="axis-title",
                     extra=f' fill="{colour}" transform="rotate(90 {W - 14} {mid})"')]
        out += [text(RIGHT + 6, sy(t) + 4, f"{t * factor:.3g}", "start", cls, f' fill="{colour}"')
                for t in yticks]

    for i, (cls, legend, colour, width, dots, curve) in enumerate(curves):
        xy = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in curve)
        out.append(f'<polyline class="{cls}" points="{xy}" fill="none" stroke="{colour}" '
                   f'stroke-width="{width}" stroke-linejoin="round"/>')
        if dots or len(curve) == 1:  # one point draws no line
            out += [f'<circle class="{cls}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" '
                    f'fill="{colour}"/>' for x, y in curve]
        ly = TOP + 14 + 16 * i
        out += [f'<line x1="{RIGHT - 150}" y1="{ly - 4}" x2="{RIGHT - 126}" y2="{ly - 4}" '
                f'stroke="{colour}" stroke-width="{width + 1}"/>',
                text(RIGHT - 120, ly, legend, "start", "legend")]
    return "\n".join(out + ["</svg>\n"])


def attention_svg(weights, tokens, title=""):
    """The SVG of weights, [layer][head][query][key] (rows sum to 1), over `tokens` (text): a square
    a head, layers down, heads across; row i is token i looking back, darker where it takes more."""
    cell = max(2.0, min(14.0, 240 / len(tokens)))  # a square of at most 240 px a head
    side, gap, left, top = cell * len(tokens), 24, 110, 90
    width, height = left + len(weights[0]) * (side + gap), top + len(weights) * (side + gap)
    out = [SVG.format(w=f"{width:.0f}", h=f"{height:.0f}", box="", px=f"{min(cell, 10):.0f}"),
           text(left, 20, title, "start", "title", ' font-size="15"')]
    for layer, heads in enumerate(weights):
        y0 = top + layer * (side + gap)
        for head, rows in enumerate(heads):
            x0 = left + head * (side + gap)
            out += [f'<g class="head" data-layer="{layer}" data-head="{head}">', *(
                f'<rect x="{x0 + k * cell:.1f}" y="{y0 + q * cell:.1f}" width="{cell:.1f}" '
                f'height="{cell:.1f}" fill="#08519c" fill-opacity="{w:.3f}"/>'
                for q, row in enumerate(rows) for k, w in enumerate(row) if w >= 0.005),
                f'<rect x="{x0}" y="{y0}" width="{side:.1f}" height="{side:.1f}" fill="none" '
                'stroke="#999"/>', "</g>"]
            if layer == 0:
                out.append(text(x0 + side / 2, top - 58, f"head {head}", cls="head-title"))
        out.append(text(8, y0 - 6, f"layer {layer}", "start", "layer-title"))
    if cell >= 6:  # the tokens, where there is room for them: down the first column, across the top
        for i, piece in enumerate(tokens):
            out += [text(left - 4, top + (i + 0.8) * cell, piece, "end", "token"),
                    text(left + (i + 0.8) * cell, top - 4, piece, "start", "token",
                         f' transform="rotate(-90 {left + (i + 0.8) * cell:.1f} {top - 4})"')]
    return "\n".join(out + ["</svg>\n"])
