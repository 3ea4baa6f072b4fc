"""The SFC report of a quantized model: JSON for tools, text for the CLI, HTML for people.

:func:`sfc_report` collects, per inference: every SFC site (multiply or shift,
its elements, the groups at both ends), the totals, and per group its
mantissa, members, their exponents and the error the sharing adds.
:func:`write_html` draws the calibration histograms coloured by group, every
tensor's error curve against the group mantissas and the pairwise similarity
matrix, as inline SVG (no plotting library needed).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from .atomic import atomic_paths
from .stats import quantization_error, signal_power
from .plan import scales as S
from .plan.grouping import PHASES, similarity
from .plan.planner import error_curves, tensor_choices
from .plan.program import sfc_sites, sfc_summary

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _added_error(stats, tq, scale: float, best_nsr: float) -> float:
    """Noise added at ``scale`` over the tensor's best scale, as a fraction of its signal power."""
    power = signal_power(stats)
    if power == 0:
        return 0.0
    qmax = S.qrange(tq.bits, tq.signed)[1]
    return max(0.0, float(quantization_error(stats, [scale], qmax)[0]) / power - best_nsr)


def sfc_report(qmodel) -> dict:
    """The SFC report of a :class:`~gwq_tvm.api.QuantizedModel` as a JSON-ready dict.

    Added errors need the calibration statistics; they are ``None`` for a model
    quantized from a given plan (no calibration run).
    """
    graph, plan, stats = qmodel.graph, qmodel.plan, qmodel.stats
    config = plan.config  # the search settings, from the plan's provenance (None for a plan that records none)
    sites = sfc_sites(graph, plan)
    curves = error_curves(graph, stats, config, sensitivity=qmodel.sensitivity) if stats is not None and config else None
    tensors = {}
    for name in graph.tensors():
        tq = plan.tensors[name]
        added = None
        if curves is not None and curves[name].weight > 0:
            added = _added_error(stats[name], tq, plan.scale(name), curves[name].nsr)
        if added is not None and qmodel.sensitivity:
            added *= curves[name].weight
        tensors[name] = {"group": tq.group, "exponent": tq.exponent, "bits": tq.bits, "signed": tq.signed,
                         "scale": plan.scale(name), "added_error": added,
                         "sensitivity": (qmodel.sensitivity or {}).get(name)}
    groups = {}
    for g, mantissa in plan.groups.items():
        members = [t for t, v in tensors.items() if v["group"] == g]
        errs = [tensors[t]["added_error"] or 0.0 for t in members]  # None: a tensor the program never materializes
        groups[g] = {"mantissa": mantissa, "members": members, "exponents": {t: tensors[t]["exponent"] for t in members},
                     "added_error": None if curves is None else float(sum(errs))}
    pairs = sorted({(tensors[s.src]["group"], tensors[s.dst]["group"]) for s in sites if s.kind == "multiply"})
    return {
        "mode": config.mode.value if config else None,
        "config": config.to_dict() if config else None,
        "error_measure": "added noise / signal power" + (", weighted by output sensitivity" if qmodel.sensitivity else "") + ", summed over tensors",
        "summary": {**sfc_summary(sites), "groups": len(plan.groups),
                    "added_error": None if curves is None else float(sum(v["added_error"] or 0.0 for v in tensors.values()))},
        "groups": groups,
        "tensors": tensors,
        "multiply_group_pairs": [list(p) for p in pairs],
        "weights": weight_report(plan),
        "mixed_precision": mixed_precision_report(plan),
        "sites": [{"node": s.node, "port": s.port, "kind": s.kind, "elements": s.elements, "channels": s.channels,
                   "src": s.src, "dst": s.dst, "src_group": tensors[s.src]["group"], "dst_group": tensors[s.dst]["group"]}
                  for s in sites],
    }


def weight_report(plan) -> dict:
    """Per layer: weight bits, granularity, PTQ-SL block grid, whether channels are reordered into the blocks, the
    number of steps, whether they are powers of two (as GWQ needs wherever the layer's SFC must stay a shift), and
    the Scale-Clip settings of the search (provenance; for a QAT export, the clip it trained with and each layer's
    ``k``), and the codebook (``uniform`` or ``post``)."""
    config = plan.config
    clip = {"rule": config.scale_clip, "k": config.scale_clip_k, "act_k": config.act_clip_k} if config and config.scale_clip else None
    trained = plan.provenance.get("qat_scale_clip")  # a QAT export: the clip it trained with, k per layer

    def clip_of(n):
        if not trained or not (trained.get("scale_clip") or trained.get("act_clip_k")):
            return clip
        return {"rule": trained.get("scale_clip"), "k": trained.get("weight_clip_k", {}).get(n),
                "act_k": trained.get("act_clip_k"), "qat": True}

    return {n: {"bits": w.bits, "granularity": w.granularity, "block": list(w.block) if w.block else None,
                "reordered": w.permutation is not None, "steps": len(w.scales), "codebook": w.codebook,
                "pot_steps": bool(all(math.frexp(v)[0] == 0.5 for v in w.scales)), "scale_clip": clip_of(n)}
            for n, w in plan.layers.items()}


def mixed_precision_report(plan) -> dict | None:
    """The bit-width search a mixed-precision plan records (``None`` for other plans): the budgets, the size and
    BitOps used (absolute and in % of W8A8), per layer its weight bits, input tensor, that tensor's bits and the
    importance values, and the ILP solve time."""
    mp = plan.provenance.get("mixed_precision")
    if not mp:
        return None
    imp_w, imp_t = mp["importance"]["weights"], mp["importance"]["tensors"]
    layers = {}
    for n, t in mp["layer_input"].items():
        layers[n] = {"weight_bits": plan.layers[n].bits, "input": t, "act_bits": plan.tensors[t].bits,
                     "weight_importance": imp_w.get(n), "act_importance": imp_t.get(t),
                     "fixed": n in mp["fixed"]["weights"]}
    return {"importance": mp["importance_kind"], "budgets": mp["budgets"],
            "size_bytes": mp["size_bytes"], "size_percent": 100.0 * mp["size_bytes"] / mp["size_w8a8_bytes"],
            "stored_bytes": mp.get("stored_bytes"), "latency": mp.get("latency"),
            "bitops": mp["bitops"], "bitops_percent": 100.0 * mp["bitops"] / mp["bitops_w8a8"],
            "solve_seconds": mp["solve_seconds"], "layers": layers}


def _format_mixed(mp: dict) -> list[str]:
    budgets = ", ".join(f"{k} budget {v['given']}" for k, v in mp["budgets"].items())
    lines = [f"mixed precision ({mp['importance']} importance; {budgets}): weights {mp['size_bytes']:.0f} bytes "
             f"({mp['size_percent']:.1f}% of W8A8), {mp['bitops']:.4g} BitOps ({mp['bitops_percent']:.1f}% of W8A8), "
             f"ILP solved in {mp['solve_seconds'] * 1000:.1f} ms"]
    if mp.get("stored_bytes"):  # what the module stores: 2/3-bit weights take a nibble, 5-7-bit ones a byte
        st = mp["stored_bytes"]
        lines.append(f"  stored on {st.get('target_name', st['target'])}: {st['bytes']:.0f} weight bytes "
                     f"({'<= 4-bit weights as nibbles' if st['int4_step'] else 'every weight in an int8 byte: no int4 step'})")
    if mp.get("latency"):
        lat = mp["latency"]
        lines.append(f"  predicted latency {lat['predicted_s'] * 1e3:.4g} ms ({100 * lat['predicted_s'] / lat['w8a8_program_s']:.1f}% "
                     f"of the W8A8 program's measured {lat['w8a8_program_s'] * 1e3:.4g} ms), measured on "
                     f"{'this machine' if lat.get('device', 'local') == 'local' else 'board ' + lat['device']}")
    fmt = lambda d: " ".join(f"{b}b:{v:.2e}" for b, v in sorted(d.items(), key=lambda kv: int(kv[0]))) if d else "fixed"  # noqa: E731
    for n, v in mp["layers"].items():
        lines.append(f"  {n}: W{v['weight_bits']} A{v['act_bits']} (input {v['input']}); importance "
                     f"w [{fmt(v['weight_importance'])}] a [{fmt(v['act_importance'])}]")
    return lines


def format_text(report: dict, max_members: int = 6) -> str:
    """The report as a few lines for the terminal."""
    s = report["summary"]
    lines = [
        f"SFC ops: {s['multiply_sites']} multiply, {s['shift_sites']} shift (per-sample elements: "
        f"{s['multiply_elements']} multiply, {s['shift_elements']} shift; shift share {s['shift_share'] * 100:.1f}%)"
    ]
    blocks = [f"{n} {w['block'][0]}x{w['block'][1]}{' reordered' if w['reordered'] else ''}"
              for n, w in report.get("weights", {}).items() if w["block"]]
    if blocks:
        lines.append("weight blocks (PTQ-SL / GDRQ groups): " + ", ".join(blocks))
    trained = [(n, w["scale_clip"]) for n, w in report.get("weights", {}).items() if (w.get("scale_clip") or {}).get("qat")]
    if trained:
        c = trained[0][1]
        ks = ", ".join(f"{n} {w['k']:g}" for n, w in trained[:max_members] if w["k"] is not None)
        lines.append(f"Scale-Clip trained in QAT ({c['rule'] or 'std'}): weights at k*sigma ({ks or 'none'}"
                     f"{', ...' if len(trained) > max_members else ''}); activations "
                     + (f"capped at {c['act_k']:g}*sigma" if c["act_k"] else "not clipped"))
    post = [f"{n} W{w['bits']}" for n, w in report.get("weights", {}).items() if w.get("codebook") == "post"]
    if post:
        lines.append(f"POST weights (powers of sqrt 2, table lookup) on {len(post)} of {len(report['weights'])} layers: "
                     + ", ".join(post[:max_members]) + (", ..." if len(post) > max_members else ""))
    if report.get("mixed_precision"):
        lines += _format_mixed(report["mixed_precision"])
    if report["mode"] == "per-layer":
        return "\n".join(lines + [f"groups: {s['groups']} (per-layer: one per tensor)"])
    if s["added_error"] is not None:
        lines.append(f"groups: {s['groups']}, added error {s['added_error']:.4g} ({report['error_measure']})")
    for g, info in report["groups"].items():
        members = info["members"]
        shown = ", ".join(members[:max_members]) + (f", ... ({len(members)} tensors)" if len(members) > max_members else "")
        err = "" if info["added_error"] is None else f", added error {info['added_error']:.4g}"
        lines.append(f"  {g}: mantissa {info['mantissa']:.4f}{err}: {shown}")
    return "\n".join(lines)


# --- HTML ------------------------------------------------------------------


def _svg(width, height, body):
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="10">{body}</svg>'


def _text(x, y, s, anchor="start", extra=""):
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{html.escape(str(s))}</text>'


def _histograms(report, stats, colours):
    cells, w, h = [], 180, 70
    names = list(report["tensors"])
    cols = 5
    for i, name in enumerate(names):
        st, info = stats[name], report["tensors"][name]
        x0, y0 = (i % cols) * (w + 10) + 5, (i // cols) * (h + 28) + 14
        counts = st.hist.reshape(64, -1).sum(axis=1).astype(float) if st.hist.size % 64 == 0 else st.hist.astype(float)
        logc = np.log1p(counts)
        top = max(logc.max(), 1e-9)
        bw = w / len(logc)
        bars = "".join(f'<rect x="{x0 + j * bw:.1f}" y="{y0 + h - h * v / top:.1f}" width="{bw:.2f}" height="{h * v / top:.1f}" '
                       f'fill="{colours[info["group"]]}"/>' for j, v in enumerate(logc))
        clip = info["scale"] * S.qrange(info["bits"], info["signed"])[1]
        xc = x0 + w * min(clip / st.absmax, 1.0) if st.absmax > 0 else x0
        cells.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>{bars}'
                     f'<line x1="{xc:.1f}" x2="{xc:.1f}" y1="{y0}" y2="{y0 + h}" stroke="black" stroke-dasharray="3,2"/>'
                     + _text(x0, y0 - 3, f"{name} ({info['group']}, 2^{info['exponent']})")
                     + _text(x0 + w, y0 + h + 10, f"|x| max {st.absmax:.3g}", "end"))
    rows = math.ceil(len(names) / cols)
    return _svg(cols * (w + 10) + 10, rows * (h + 28) + 10, "".join(cells))


def _curves(report, curves, colours):
    w, h, pad = 620, 260, 40
    ys = [c.added * 100 for c in curves.values() if c.weight > 0]
    top = max(float(np.max(ys)) if ys else 1.0, 1e-9)
    xs = np.arange(PHASES) / PHASES
    body = [f'<rect x="{pad}" y="10" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for name, c in curves.items():
        if c.weight == 0:
            continue
        pts = " ".join(f"{pad + w * x:.1f},{10 + h - h * y / top:.1f}" for x, y in zip(xs, c.added * 100))
        body.append(f'<polyline points="{pts}" fill="none" stroke="{colours[report["tensors"][name]["group"]]}" stroke-width="1.2">'
                    f'<title>{html.escape(name)}</title></polyline>')
    for g, info in report["groups"].items():
        x = pad + w * (math.log2(info["mantissa"]) % 1.0)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="10" y2="{10 + h}" stroke="{colours[g]}" stroke-dasharray="4,3"/>')
    for m in (1.0, 1.25, 1.5, 1.75):
        x = pad + w * math.log2(m)
        body.append(_text(x, h + 24, f"{m:g}", "middle"))
    body.append(_text(pad + w / 2, h + 38, "scale mantissa (log axis); dashed: group mantissas", "middle"))
    body.append(_text(pad - 4, 16, f"{top:.2g}%", "end") + _text(pad - 4, 10 + h, "0", "end"))
    body.append(_text(12, 10 + h / 2, "added noise / signal (%)", "middle", f'transform="rotate(-90 12 {10 + h / 2})"'))
    return _svg(w + pad + 10, h + 46, "".join(body))


def _matrix(report, curves):
    names = [n for n, c in curves.items() if c.weight > 0]
    order = sorted(names, key=lambda n: (report["tensors"][n]["group"], names.index(n)))
    sub = {n: curves[n] for n in order}
    d = similarity(sub) * 100
    top = max(float(d.max()), 1e-9)
    cell, pad = 16, 110
    body = []
    for i, a in enumerate(order):
        body.append(_text(pad - 4, pad + i * cell + 12, a, "end"))
        body.append(_text(pad + i * cell + 10, pad - 4, a, "start", f'transform="rotate(-60 {pad + i * cell + 10} {pad - 4})"'))
        for j, b in enumerate(order):
            v = d[i, j] / top
            shade = int(255 * (1 - v))
            body.append(f'<rect x="{pad + j * cell}" y="{pad + i * cell}" width="{cell}" height="{cell}" fill="rgb(255,{shade},{shade})">'
                        f'<title>{html.escape(a)} + {html.escape(b)}: {d[i, j]:.3g}%</title></rect>')
    # group boundaries
    k = 0
    for g in dict.fromkeys(report["tensors"][n]["group"] for n in order):
        size = sum(report["tensors"][n]["group"] == g for n in order)
        body.append(f'<rect x="{pad + k * cell}" y="{pad + k * cell}" width="{size * cell}" height="{size * cell}" fill="none" stroke="black" stroke-width="1.5"/>')
        k += size
    n = len(order)
    body.append(_text(pad, pad + n * cell + 16, f"white: 0, red: {top:.3g}% added noise/signal when the two tensors share a mantissa"))
    return _svg(pad + n * cell + 260, pad + n * cell + 24, "".join(body))


def _layer_error_plot(result: dict) -> str:
    """Horizontal bars per tensor, worst first: accumulated SQNR (dB) and the output KL of the tensor alone."""
    rows = result["tensors"]
    row_h, pad, w = 16, 130, 260
    sq = [r["sqnr_db"] for r in rows if r["sqnr_db"] is not None]
    lo, hi = min(sq + [0.0]), max(sq + [1.0])
    kl_top = max([r["alone_kl"] for r in rows if r["alone_kl"] is not None] + [1e-12])
    body = [_text(pad, 12, "accumulated SQNR (dB)"), _text(pad + w + 40, 12, "output KL, this tensor alone")]
    zero = pad + w * (0 - lo) / (hi - lo)
    for i, r in enumerate(rows):
        y = 20 + i * row_h
        body.append(_text(pad - 6, y + 11, f"{r['name']} ({r['bits']}b, {r['sfc']})", "end"))
        if r["sqnr_db"] is not None:
            x1 = pad + w * (r["sqnr_db"] - lo) / (hi - lo)
            body.append(f'<rect x="{min(zero, x1):.1f}" y="{y + 2}" width="{abs(x1 - zero):.1f}" height="{row_h - 4}" fill="#1f77b4">'
                        f'<title>{r["sqnr_db"]:.2f} dB</title></rect>')
        if r["alone_kl"] is not None:
            bw = w * r["alone_kl"] / kl_top
            body.append(f'<rect x="{pad + w + 40}" y="{y + 2}" width="{bw:.1f}" height="{row_h - 4}" fill="#d62728">'
                        f'<title>{r["alone_kl"]:.4g}</title></rect>')
    n = len(rows)
    body.append(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="16" y2="{20 + n * row_h}" stroke="#999"/>')
    body.append(_text(pad, 34 + n * row_h, f"{lo:.1f}") + _text(pad + w, 34 + n * row_h, f"{hi:.1f} dB", "end"))
    body.append(_text(pad + w + 40 + w, 34 + n * row_h, f"{kl_top:.3g}", "end"))
    return _svg(pad + 2 * w + 60, 44 + n * row_h, "".join(body))


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}"


def write_html(report: dict, qmodel, path) -> Path:
    """Write the report as a self-contained HTML page (and the JSON beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = list(report["groups"])
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    s = report["summary"]
    rows = "".join(
        f'<tr><td><span style="color:{colours[g]}">&#9632;</span> {html.escape(g)}</td><td>{info["mantissa"]:.5f}</td>'
        f'<td>{len(info["members"])}</td><td>{_fmt(info["added_error"])}</td>'
        f'<td>{html.escape(", ".join(f"{t} (2^{e})" for t, e in info["exponents"].items()))}</td></tr>'
        for g, info in report["groups"].items()
    )
    site_rows = "".join(
        f'<tr><td>{html.escape(x["node"])}</td><td>{html.escape(x["port"])}</td><td>{x["kind"]}</td><td>{x["elements"]}</td>'
        f'<td>{html.escape(x["src_group"])} &rarr; {html.escape(x["dst_group"])}</td></tr>'
        for x in report["sites"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>gwq-tvm SFC report</title>",
        "<style>body{font-family:sans-serif;margin:20px;max-width:1100px} table{border-collapse:collapse;font-size:12px}"
        " td,th{border:1px solid #ddd;padding:3px 6px;text-align:left} h2{margin-top:28px}</style></head><body>",
        f"<h1>SFC report ({html.escape(report['mode'] or 'plan given')})</h1>",
        f"<p>Per inference: <b>{s['multiply_sites']}</b> multiply SFC sites / <b>{s['shift_sites']}</b> shift sites; "
        f"<b>{s['multiply_elements']}</b> multiply elements, <b>{s['shift_elements']}</b> shift elements "
        f"(shift share <b>{s['shift_share'] * 100:.1f}%</b>); {s['groups']} groups"
        + ("" if s["added_error"] is None else f"; added error {s['added_error']:.4g} ({html.escape(report['error_measure'])})") + ".</p>",
        "<h2>Groups</h2><table><tr><th>group</th><th>mantissa</th><th>tensors</th><th>added error</th><th>members (exponent)</th></tr>",
        rows, "</table>",
    ]
    stats, config = qmodel.stats, qmodel.plan.config
    if stats is not None and config is not None:
        curves = error_curves(qmodel.graph, stats, config, tensor_choices(qmodel.graph, stats, config), qmodel.sensitivity)
        parts += [
            "<h2>Error curves</h2><p>Each tensor's added quantization noise when its scale mantissa is forced to x "
            "(best exponent for x), coloured by group.</p>", _curves(report, curves, colours),
            "<h2>Similarity matrix</h2><p>Added error if two tensors share one mantissa (tensors ordered by group; boxes are groups).</p>",
            _matrix(report, curves),
            "<h2>Calibration histograms</h2><p>|x| histograms (log counts) coloured by group; dashed: the clipping point.</p>",
            _histograms(report, stats, colours),
        ]
    if report.get("layer_error"):
        le = report["layer_error"]
        parts += [f"<h2>Per-tensor error</h2><p>On {le['samples']} samples, worst first: the integer program's activation "
                  f"against the float model's (accumulated SQNR) and the output KL when this tensor alone is quantized "
                  f"(weights as planned; weights alone: {le['weights_only_kl']:.4g}; whole program: {le['program_kl']:.4g}).</p>",
                  _layer_error_plot(le)]
    parts += ["<h2>SFC sites</h2><table><tr><th>node</th><th>input</th><th>kind</th><th>elements</th><th>groups</th></tr>",
              site_rows, "</table></body></html>"]
    with atomic_paths(path, path.with_suffix(".json")) as (page, data):
        page.write_text("".join(parts))
        data.write_text(json.dumps(report, indent=1) + "\n")
    return path
