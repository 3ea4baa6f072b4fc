"""Mixed precision on the bundled ResNet and MobileNetV3-Small: uniform policies against the ILP and two baselines.

For each model (``--model``; one process per model, results merged by ``--table``):

* uniform W8A8, W4A8, W4A4, W2A8 (every layer and tensor at those widths);
* at each size budget (30%, 40%, 50% of the W8A8 packed weight bytes):
  LIMPQ's ILP on the **learned** indicators (one joint QAT run over all
  candidate widths, :mod:`gwq_tvm.qat.importance`), on the post-training
  **proxy** (output KL of each layer alone), on the **HAWQ**-style Hessian
  trace x perturbation, and the **greedy** baseline (proxy sensitivity,
  lowering the least sensitive layer until the budget holds).

Each importance kind is measured once per model and saved as an indicator
file; every budget's policy is then the ILP (or greedy) on that file.
Every row is quantized from 512 calibration images, compiled (integer-only)
and evaluated on the 10k Fashion-MNIST test images: "PTQ accuracy".  The
learned rows and the uniform W4A8/W4A4 rows (the uniform policies of equal or
larger size than every budget) are also fine-tuned with QAT from the float
weights (``gwq_tvm.qat.train``, the same short schedule for all rows of a model:
``QAT_EPOCHS`` x ``QAT_IMAGES[model]`` training images), exported, compiled and
evaluated: "QAT accuracy".  Columns: packed weight bytes
(``bits * count / 8``), BitOps per sample (``MACs * w_bits * a_bits``), both
also in % of W8A8, the ILP/greedy solve time, the importance time (loaded
machine).  No latency: the machine is shared and loaded.

Writes ``benchmarks/results/mixed_precision/<model>.json`` row by row (a rerun
skips the rows present), the indicator files beside it, and with ``--table``
``mixed_precision.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "mixed_precision"
MODELS = ("fmnist_resnet", "fmnist_mobilenetv3")
BUDGETS = ("30%", "40%", "50%")
UNIFORM = {"W8A8": dict(), "W4A8": dict(weight_bits=4), "W4A4": dict(weight_bits=4, act_bits=4),
           "W3A8": dict(weight_bits=3), "W2A8": dict(weight_bits=2)}
#: uniform rows fine-tuned with QAT (those of equal or larger size than some budget, below W8A8)
UNIFORM_QAT = ("W4A8", "W4A4", "W3A8")
CALIB = 512
#: joint indicator training: images of the 60k training set, epochs, Adam learning rate of the log-steps
#: (``--indicator-*``; the file records what trained it)
INDICATOR_IMAGES, INDICATOR_EPOCHS, INDICATOR_SCALE_LR = 20000, 1, 1e-2
#: the authors' uniform-width passes in every joint step (``--indicator-uniform-passes``)
INDICATOR_UNIFORM = False
#: QAT fine-tuning of the chosen policies: epochs, training images per model (MobileNetV3's steps cost ~7x the
#: ResNet's here, and the shared machine gave each process about a fifth of a core)
QAT_EPOCHS = 1
QAT_IMAGES = {"fmnist_resnet": 10000, "fmnist_mobilenetv3": 5000}
#: the ILP's candidate weight widths (``--weight-widths``; default: ``QuantConfig.mp_weight_bits``, {2, 3, 4, 8}).  The
#: authors' ResNet runs offer every width from 2 to 6 (their ``cand``), with the first and last layers at 8
MP_WEIGHT_BITS = None
#: torch threads of each QAT (``--qat-threads``; 1 beside another job: spinning threads on a shared core stall)
QAT_THREADS = None


def figures(q) -> dict:
    """Packed weight bytes and BitOps of a quantized model's plan, absolute and in % of W8A8."""
    from gwq_tvm.calibration.mixed_precision import layer_macs

    g, plan = q.graph, q.plan
    size = sum(g.nodes[n].weight.size * w.bits / 8 for n, w in plan.layers.items())
    bitops = sum(layer_macs(g.nodes[n]) * w.bits * plan.tensors[g.tensor_of(g.nodes[n].inputs[0])].bits
                 for n, w in plan.layers.items())
    size8 = sum(g.nodes[n].weight.size for n in plan.layers)
    bitops8 = sum(layer_macs(g.nodes[n]) * 64 for n in plan.layers)
    return {"size_bytes": size, "size_percent": 100 * size / size8, "bitops": bitops, "bitops_percent": 100 * bitops / bitops8}


def compiled_accuracy(q, test_x, test_y) -> float:
    import tvm
    from tvm import relax

    import gwq_tvm

    assert q.integer_only.ok, str(q.integer_only)
    vm = relax.VirtualMachine(gwq_tvm.build(q), tvm.cpu())
    return gwq_tvm.accuracy(gwq_tvm.predict(vm, test_x, q.float_model.input_shape), test_y)


def qat_accuracy(q, work: Path, train, test, images: int) -> dict:
    """Fine-tune ``q``'s plan from the float weights, export, compile, evaluate (the ``gwq-tvm train`` flow)."""
    import gwq_tvm
    from gwq_tvm.plan.quantplan import QuantPlan
    from gwq_tvm.qat import QATModel, TrainConfig, export_qat, train as qat_train

    t0 = time.time()
    model = QATModel(q.graph, q.plan)
    hist = qat_train(model, train[0][:images], train[1][:images], TrainConfig(epochs=QAT_EPOCHS, threads=QAT_THREADS))
    onnx_path, plan_path = export_qat(model, work / "qat.onnx")
    q2 = gwq_tvm.quantize(str(onnx_path), plan=QuantPlan.load(plan_path))
    assert {n: w.bits for n, w in q2.plan.layers.items()} == {n: w.bits for n, w in q.plan.layers.items()}
    return {"qat_accuracy": compiled_accuracy(q2, *test), "qat_seconds_loaded": time.time() - t0,
            "qat_schedule": f"{QAT_EPOCHS} x {images} images", "qat_loss": hist[-1]["loss"]}


def widths() -> dict:
    """The ``QuantConfig`` fields of ``--weight-widths`` (none: the default candidates)."""
    return {"mp_weight_bits": MP_WEIGHT_BITS} if MP_WEIGHT_BITS else {}


def indicator_file(name: str, kind: str, model_path, calib, train) -> Path:
    """Measure (or train) ``kind`` indicators of ``name`` once; the file every budget reads."""
    import gwq_tvm
    from gwq_tvm import QuantConfig
    from gwq_tvm.qat import TrainConfig
    from gwq_tvm.qat.importance import learn_importance, record, save_importance

    path = OUT / f"{name}.{kind}.importance.json"
    if path.exists():
        return path
    if kind == "learned":
        cfg = QuantConfig(mixed_precision=True, size_budget="50%", importance="learned", importance_file=str(path), **widths())
        rec = learn_importance(model_path, calib, train[0][:INDICATOR_IMAGES], train[1][:INDICATOR_IMAGES], cfg,
                               TrainConfig(epochs=INDICATOR_EPOCHS, scale_lr=INDICATOR_SCALE_LR, threads=QAT_THREADS),
                               log=print, uniform_passes=INDICATOR_UNIFORM)
    else:  # measured by the strategy itself on the calibration images; saved from the plan's record
        cfg = QuantConfig(mixed_precision=True, size_budget="50%", importance=kind, **widths())
        q = gwq_tvm.quantize(model_path, calib, cfg)
        mp = q.plan.provenance["mixed_precision"]
        rec = record(kind, q.graph, cfg, {n: {int(b): v for b, v in d.items()} for n, d in mp["importance"]["weights"].items()},
                     {t: {int(a): v for a, v in d.items()} for t, d in mp["importance"]["tensors"].items()},
                     seconds=mp["importance_seconds"], settings=mp["importance_source"])
    save_importance(path, rec)
    print(f"{name}: {kind} indicators in {rec['seconds']:.1f} s", flush=True)
    return path


def run_model(name: str, phase: str = "all", also_qat=(), only=()) -> None:
    """Measure ``name``'s rows: ``phase`` ``ptq`` (quantize, compile, evaluate), ``qat`` (fine-tune the rows that
    take QAT and have none yet) or ``all`` (both, row by row).  ``also_qat``: label prefixes of further rows to
    fine-tune (e.g. ``"ILP proxy"``: is it the policy or the short QAT?)."""
    import torch

    import gwq_tvm
    from gwq_tvm import QuantConfig
    from gwq_tvm.atomic import write_text
    from gwq_tvm.data import bundled_model, fashion_mnist

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{name}.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else {}
    # the QAT phase writes its own file (it may run beside the PTQ phase of the same model); --table merges them
    qat_out = OUT / f"{name}.qat.json"
    qat_rows = json.loads(qat_out.read_text()) if qat_out.exists() else {}
    if phase == "qat":
        rows = {k: {**v, **qat_rows.get(k, {})} for k, v in rows.items()}
    calib = fashion_mnist("calib")[0][:CALIB]
    test = fashion_mnist("test")
    train = fashion_mnist("train")
    model_path = bundled_model(name)

    def save():
        write_text(out, json.dumps({"model": name, "test_images": len(test[0]), "calib_images": CALIB, "rows": rows}, indent=1) + "\n")

    todo = [(label, dict(kw), None, None) for label, kw in UNIFORM.items()]
    for budget in BUDGETS:
        for kind, search in (("learned", "ilp"), ("proxy", "ilp"), ("hessian", "ilp"), ("proxy", "greedy")):
            label = f"{'greedy' if search == 'greedy' else 'ILP'} {kind} size {budget}"
            todo.append((label, dict(mixed_precision=True, size_budget=budget, importance=kind, mp_search=search, **widths()),
                         kind, budget))
    for label, kw, kind, budget in todo:
        if only and not label.startswith(tuple(only)):
            continue
        wants_qat = phase != "ptq" and (kind == "learned" or label in UNIFORM_QAT or label.startswith(tuple(also_qat)))
        if label in rows and not (wants_qat and "qat_accuracy" not in rows[label]):
            continue
        if label not in rows and phase == "qat":
            continue
        imp_seconds = None
        if kind is not None:
            path = indicator_file(name, kind, model_path, calib, train)
            kw["importance_file"] = str(path)
            imp_seconds = json.loads(path.read_text())["seconds"]
        t0 = time.time()
        q = gwq_tvm.quantize(model_path, calib, QuantConfig(**kw))
        mp = q.plan.provenance.get("mixed_precision")
        # QAT keeps activations symmetric (it refuses zero points); the widths do not depend on them
        qs = gwq_tvm.quantize(model_path, calib, QuantConfig(**kw, symmetric_activations=True)) if wants_qat else None
        if label in rows:  # the QAT phase of a measured row: the same plan again (same calibration, same indicators)
            assert {n: w.bits for n, w in q.plan.layers.items()} == rows[label]["weight_bits"]
            qat_rows[label] = qat_accuracy(qs, OUT / "work" / name / label.replace(" ", "_").replace("%", ""), train, test,
                                           QAT_IMAGES[name])
            merged = json.loads(qat_out.read_text()) if qat_out.exists() else {}  # another QAT process may have written
            write_text(qat_out, json.dumps({**merged, label: qat_rows[label]}, indent=1) + "\n")
            print(f"{name} {label}: QAT {qat_rows[label]['qat_accuracy'] * 100:.2f}%", flush=True)
            continue
        row = {"config": kw, "importance": kind, "search": kw.get("mp_search", "ilp") if kind else None,
               "budget": budget, "ptq_accuracy": compiled_accuracy(q, *test), **figures(q),
               "weight_bits": {n: w.bits for n, w in q.plan.layers.items()},
               "act_bits": ({t: q.plan.tensors[t].bits for t in mp["act_bits"]} if mp else None),
               "solve_seconds": mp["solve_seconds"] if mp else None, "importance_seconds": imp_seconds,
               "ptq_seconds_loaded": time.time() - t0}
        if wants_qat:
            row.update(qat_accuracy(qs, OUT / "work" / name / label.replace(" ", "_").replace("%", ""), train, test,
                                    QAT_IMAGES[name]))
        rows[label] = row
        save()
        qat = f", QAT {row['qat_accuracy'] * 100:.2f}%" if "qat_accuracy" in row else ""
        print(f"{name} {label}: PTQ {row['ptq_accuracy'] * 100:.2f}%{qat}, size {row['size_percent']:.1f}%, "
              f"BitOps {row['bitops_percent']:.1f}%", flush=True)


def bits_summary(bits: dict) -> str:
    values = list(bits.values())
    if len(values) <= 12:
        return " ".join(str(b) for b in values)
    return ", ".join(f"{values.count(b)}x{b}" for b in sorted(set(values), reverse=True))


def learned_movement(name: str) -> str | None:
    """How far the joint run moved the learned weight steps from their LSQ start (``2 mean|W| / sqrt(qmax)``)."""
    import gwq_tvm
    from gwq_tvm.data import bundled_model
    from gwq_tvm.extract import extract_graph
    from gwq_tvm.qat.importance import load_importance, lsq_init

    path = OUT / f"{name}.learned.importance.json"
    if not path.exists():
        return None
    rec = load_importance(path)
    graph = extract_graph(gwq_tvm.load_model(bundled_model(name)).mod)
    ratios = [v / lsq_init(graph.nodes[n].weight, b) for n, d in rec["weights"].items() for b, v in d.items()]
    st = rec["settings"]
    tc = st["train"]
    passes = ", each with one pass per uniform weight width before the sampled one" if st.get("uniform_passes") else ""
    return (f"{st['steps']} joint steps{passes} ({tc['epochs']} epoch(s) x {st['images']} images, batch {tc['batch_size']}, "
            f"step learning rate {tc['scale_lr']:g} on log s; {rec['seconds']:.0f} s) left the learned weight steps "
            f"between {min(ratios):.2f}x and {max(ratios):.2f}x of their LSQ start 2 mean|W| / sqrt(qmax).")


def table() -> None:
    from gwq_tvm.atomic import write_text

    results = {m: json.loads((OUT / f"{m}.json").read_text()) for m in MODELS if (OUT / f"{m}.json").exists()}
    for m, res in results.items():
        if (OUT / f"{m}.qat.json").exists():
            for label, fields in json.loads((OUT / f"{m}.qat.json").read_text()).items():
                res["rows"][label].update(fields)
    write_text(OUT / "mixed_precision.json", json.dumps(results, indent=1) + "\n")
    schedules = "; ".join(f"{m} " + ", ".join(sorted({r["qat_schedule"] for r in res["rows"].values() if "qat_schedule" in r}))
                          for m, res in results.items())
    lines = ["# Mixed precision: LIMPQ's ILP (learned / proxy / HAWQ indicators) and a greedy baseline against uniform policies", "",
             f"Bundled models, Fashion-MNIST: every accuracy is of the **compiled integer program** on the 10k test images "
             f"(binomial standard error about 0.3 pt). PTQ: quantized from {CALIB} calibration images. QAT: fine-tuned from the "
             f"float weights with the row's plan (epochs x the first training images: {schedules}; LSQ-style `gwq_tvm.qat`), "
             "exported and compiled. Learned indicators: one joint QAT run over all candidate widths (its schedule "
             "below each model's table). The first and last layers' weights and the "
             "model input stay at 8 bits in every ILP/greedy policy (not in the uniform rows). Size: packed weight bytes "
             "(bits x count / 8, the ideal packing; compiled modules store 2-4-bit weights as nibbles, two per byte, so a "
             "2- or 3-bit layer's stored bytes are those of 4 bits; `int4_export_size.py` measures the .so); "
             "BitOps: MACs x w_bits x a_bits per sample. "
             "Times were taken on a shared, loaded 2-core machine.", ""]
    for m, res in results.items():
        rows = res["rows"]
        lines += [f"## {m}", "",
                  "| policy | PTQ accuracy | QAT accuracy | size (bytes) | size (% W8A8) | BitOps (% W8A8) | solve (ms) | importance (s) | weight bits | act bits |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            qat = f"{r['qat_accuracy'] * 100:.2f}%" if "qat_accuracy" in r else "-"
            solve = f"{r['solve_seconds'] * 1000:.1f}" if r["solve_seconds"] is not None else "-"
            imp = f"{r['importance_seconds']:.1f}" if r["importance_seconds"] is not None else "-"
            acts = bits_summary(r["act_bits"]) if r["act_bits"] else "-"
            lines.append(f"| {label} | {r['ptq_accuracy'] * 100:.2f}% | {qat} | {r['size_bytes']:.0f} | {r['size_percent']:.1f}% | "
                         f"{r['bitops_percent']:.1f}% | {solve} | {imp} | {bits_summary(r['weight_bits'])} | {acts} |")
        moved = learned_movement(m)
        if moved:
            lines += ["", f"Learned indicators: {moved}"]
        lines += ["", "Target: at every size budget the learned mixed policy (after QAT) is more accurate than every uniform "
                  "policy of equal or larger size (compared after QAT where the uniform row has one, else PTQ); the proxy "
                  "policies (post-training indicator, fine-tuned with the same QAT) for comparison:", ""]
        for kind in ("learned", "proxy"):
            for budget in BUDGETS:
                mixed = rows.get(f"ILP {kind} size {budget}")
                if mixed is None or "qat_accuracy" not in mixed:
                    continue
                rivals = [(u, rows[u]) for u in UNIFORM if u in rows and rows[u]["size_bytes"] >= mixed["size_bytes"] and u != "W8A8"]
                verdicts = []
                for u, r in rivals:
                    acc = r.get("qat_accuracy", r["ptq_accuracy"])
                    how = "QAT" if "qat_accuracy" in r else "PTQ"
                    verdicts.append(f"{u} {how} {acc * 100:.2f}% ({'beaten' if mixed['qat_accuracy'] > acc else 'NOT beaten'})")
                w8 = rows.get("W8A8")
                w8s = f"; W8A8 PTQ {w8['ptq_accuracy'] * 100:.2f}% ({'beaten' if mixed['qat_accuracy'] > w8['ptq_accuracy'] else 'not beaten'})" if w8 else ""
                against = ", ".join(verdicts) + w8s if verdicts or w8s else "no uniform row in this table"
                lines.append(f"- {budget}: {kind} {mixed['qat_accuracy'] * 100:.2f}% (size {mixed['size_percent']:.1f}%) vs "
                             + against)
        lines.append("")
    if (OUT / "notes.md").exists():  # the hand-written reading of the numbers
        lines += [(OUT / "notes.md").read_text()]
    write_text(OUT / "mixed_precision.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    global OUT, MP_WEIGHT_BITS, INDICATOR_EPOCHS, INDICATOR_IMAGES, INDICATOR_SCALE_LR, INDICATOR_UNIFORM, QAT_EPOCHS, QAT_THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS, help="measure this model's rows (resumable)")
    ap.add_argument("--phase", choices=("all", "ptq", "qat"), default="all",
                    help="ptq: every row's PTQ figures first; qat: then the QAT of the rows that take it; all: row by row")
    ap.add_argument("--also-qat", nargs="*", default=[], metavar="PREFIX",
                    help="fine-tune these rows too (label prefixes, e.g. 'ILP proxy')")
    ap.add_argument("--only", nargs="*", default=[], metavar="PREFIX", help="only the rows with these label prefixes")
    ap.add_argument("--table", action="store_true", help="merge the per-model results into mixed_precision.{json,md}")
    ap.add_argument("--indicator-epochs", type=int, default=INDICATOR_EPOCHS, help="epochs of the joint indicator run")
    ap.add_argument("--indicator-images", type=int, default=INDICATOR_IMAGES, help="training images of the joint run")
    ap.add_argument("--indicator-scale-lr", type=float, default=INDICATOR_SCALE_LR, help="Adam rate of its log-steps")
    ap.add_argument("--indicator-uniform-passes", action="store_true",
                    help="the authors' extra pass per candidate width in every joint step")
    ap.add_argument("--qat-epochs", type=int, default=QAT_EPOCHS, help="epochs of each row's QAT fine-tuning")
    ap.add_argument("--qat-images", type=int, help="training images of each row's QAT (default: per model, above)")
    ap.add_argument("--qat-threads", type=int, help="torch threads of the QAT")
    ap.add_argument("--weight-widths", type=int, nargs="+", metavar="BITS",
                    help="the ILP's candidate weight widths (default: QuantConfig's 2 3 4 8)")
    ap.add_argument("--out", type=Path, default=OUT, help="results folder (default: the committed one)")
    args = ap.parse_args()
    MP_WEIGHT_BITS = tuple(args.weight_widths) if args.weight_widths else None
    QAT_EPOCHS, QAT_THREADS, INDICATOR_UNIFORM = args.qat_epochs, args.qat_threads, args.indicator_uniform_passes
    if args.qat_images:
        QAT_IMAGES.update(dict.fromkeys(QAT_IMAGES, args.qat_images))
    OUT, INDICATOR_EPOCHS, INDICATOR_IMAGES, INDICATOR_SCALE_LR = (args.out, args.indicator_epochs, args.indicator_images,
                                                                  args.indicator_scale_lr)
    if args.model:
        run_model(args.model, args.phase, args.also_qat, args.only)
    if args.table or not args.model:
        table()


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    main()
