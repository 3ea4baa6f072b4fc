"""Rewrite an ONNX graph into the inference form TVM's importer takes, before it is imported.

Each rewrite works on a copy of the user's ``ModelProto`` (``from_onnx`` copies it first):

* :func:`upgrade_opset`: models below :data:`IMPORT_OPSET` (the old zoo
  files are opset 7-9) are converted with ``onnx.version_converter``, whose
  adapters TVM's converters were written against;
* :func:`drop_inference_noops`: ``Dropout`` is the identity at inference;
  TVM 0.27 imports it as a ``(y, mask)`` tuple whose ``TupleGetItem`` no
  quantizer pass reads, so it is rewritten to ``Identity`` (which TVM binds to
  its input);
* :func:`sum_to_adds`: an n-input ``Sum`` (the Caffe2 zoo's residual adds)
  becomes a chain of ``Add`` s, which the residual-add kind takes;
* :func:`max_min_to_clips`: ``Max(x, c)`` / ``Min(x, c)`` of a one-element
  constant (the dynamo exporter's ``clamp``) becomes ``Clip``;
* :func:`fold_shape_subgraphs`: ``Shape`` and what computes only on shapes
  (``Gather``, ``Slice``, ``Concat``, ``Unsqueeze``, ``Mul``, ...) are
  evaluated once the input shape is set (ONNX shape inference gives every
  tensor's dims), and replaced by constant initializers.  A dimension that
  stays symbolic (the batch) is carried as ``0`` into a ``Reshape`` target,
  ONNX's "copy this dimension", when that is what it is.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError

#: the opset old models are upgraded to (version_converter adapters exist for every step 7 -> 13)
IMPORT_OPSET = 13


def opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model, source: str):
    """``model`` converted to :data:`IMPORT_OPSET` when older (a new proto), else ``model``."""
    import onnx
    from onnx import version_converter

    if opset_of(model) >= IMPORT_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, IMPORT_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as err:  # noqa: BLE001 - the converter raises RuntimeError/ValidationError/IndexError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{source}: cannot upgrade ONNX opset {opset_of(model)} to {IMPORT_OPSET} "
                         f"for import ({first})") from None
    return upgraded


def drop_inference_noops(model, source: str) -> None:
    """Rewrite every ``Dropout`` (in place) to ``Identity`` of its data input.

    Raises
    ------
    ModelError
        If a Dropout's mask output is used (no inference graph needs it).
    """
    from onnx import helper

    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for k, node in enumerate(model.graph.node):
        if node.op_type != "Dropout":
            continue
        if len(node.output) > 1 and node.output[1] and node.output[1] in used:
            raise ModelError(f"{source}: Dropout node {node.name or node.output[0]!r} has its mask output "
                             f"{node.output[1]!r} used; gwq-tvm compiles inference graphs only")
        ident = helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        model.graph.node[k].CopyFrom(ident)


def sum_to_adds(model) -> None:
    """Rewrite (in place) every n-input ``Sum`` (Caffe2 zoo residuals) as a chain of ``Add`` s.

    TVM 0.27 imports ``Sum`` as ``sum(stack(broadcast_to(x_i)))``, which no
    integer kind reads; ``Add`` is the residual add kind's.  ``Sum`` and
    ``Add`` broadcast alike (numpy rules).
    """
    from onnx import helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "Sum" or len(node.input) < 2:
            nodes.append(node if node.op_type != "Sum" else helper.make_node("Identity", node.input, node.output,
                                                                          name=node.name))
            continue
        acc = node.input[0]
        for k, term in enumerate(node.input[1:], start=1):
            out = node.output[0] if k == len(node.input) - 1 else f"{node.output[0]}__sum{k}"
            nodes.append(helper.make_node("Add", [acc, term], [out], name=node.name if k == 1 else f"{node.name}__{k}"))
            acc = out
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def max_min_to_clips(model) -> None:
    """Rewrite (in place) a two-input ``Max`` / ``Min`` of a tensor and a one-element float constant as ``Clip``.

    PyTorch's dynamo exporter writes ``x.clamp(min=0)`` (and ``clamp_min``) as
    ``Max(x, 0.0)``; TVM 0.27 imports the variadic ``Max`` as
    ``max(stack(broadcast_to(x), broadcast_to(c)))``, which no integer kind
    reads, so the activation stayed in float.  ``Max(x, c) = Clip(x, min=c)``
    and ``Min(x, c) = Clip(x, max=c)`` elementwise, and a one-element constant
    broadcasts to ``x``'s shape in both (the bound is written as the 0-d
    initializer Clip requires).
    """
    from onnx import helper, numpy_helper

    consts = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("Max", "Min") and len(node.input) == 2:
            const = [i for i in node.input if i in consts]
            if len(const) == 1:
                value = numpy_helper.to_array(consts[const[0]])
                if value.size == 1 and value.ndim <= 1 and value.dtype.kind == "f":
                    x = next(i for i in node.input if i != const[0])
                    bound = f"{node.output[0]}__bound"
                    model.graph.initializer.append(numpy_helper.from_array(value.reshape(()), bound))
                    ins = [x, bound, ""] if node.op_type == "Max" else [x, "", bound]
                    nodes.append(helper.make_node("Clip", ins, list(node.output), name=node.name))
                    continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


#: ops evaluated on constant (shape) inputs by :func:`fold_shape_subgraphs`
_SHAPE_OPS = frozenset({
    "Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Mul", "Div", "Add", "Sub", "Reshape",
    "ReduceProd", "Identity", "Constant", "Floor", "Ceil", "Max", "Min", "Range", "Equal", "Where", "Abs", "Neg",
    # torch's exporter builds F.pad's pads from constants: ConstantOfShape -> Concat -> Reshape -> Slice ->
    # Transpose -> Reshape -> Cast, which TVM's Pad converter cannot take (it wants constant pads)
    "ConstantOfShape", "Transpose",
})
#: a computed value larger than this is data, not a shape: it is left to TVM (FoldConstant)
_MAX_FOLDED_ELEMENTS = 1 << 12
#: two batch sizes (primes no network uses as a dimension) tell batch-dependent values apart
_PROBES = (9973, 9967)


def fold_shape_subgraphs(model) -> None:
    """Fold the shape computations of ``model`` (in place) until none is left that can be folded.

    One round (:func:`_fold_shape_round`) folds what shape inference can see.
    A ``Reshape`` whose target is computed hides its output shape from shape
    inference until that target is folded, so a chain of them (ShuffleNet's
    channel shuffles, ``x.view(x.size(0), ...)`` after each block) folds one
    link per round; rounds repeat while they fold something.
    """
    while _fold_shape_round(model):
        pass


def _fold_shape_round(model) -> bool:
    """Replace (in place) the shape computations of ``model`` by initializers, with its input shape set;
    return whether anything was replaced.

    ``Shape(t)`` is known when shape inference gives every dim of ``t``; a
    dim that is symbolic is probed with two batch sizes.  Nodes of
    :data:`_SHAPE_OPS` whose inputs are all known are evaluated with
    ``onnx.reference``.  A known value is written as an initializer when it
    is the same under both probes, or when it is a ``Reshape`` target whose
    probed entries are all at axis 0 (the batch, copied by ``0``); nodes left
    without users are removed.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph shape inference rejects: leave it to TVM's importer
        return False
    dims = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    known = [dict(consts), dict(consts)]  # the values under each probe
    producers = {o: n for n in model.graph.node for o in n.output}
    folded = set()
    symbols: dict = {}
    for node in model.graph.node:
        if node.op_type not in _SHAPE_OPS:
            continue
        if node.op_type == "Shape":
            shape = dims.get(node.input[0])
            if shape is None or any(d is None for d in shape):
                continue
            syms = [d for d in shape if isinstance(d, str)]
            if len(set(syms)) > 1:
                continue
            for p, env in zip(_PROBES, known):
                full = np.array([p if isinstance(d, str) else d for d in shape], np.int64)
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), None)
                env[node.output[0]] = full[start:end]
            folded.add(node.output[0])
            continue
        if not all(i == "" or i in known[0] for i in node.input):
            continue
        if node.op_type != "Constant" and not any(i in folded for i in node.input):
            continue  # a weight computation, not a shape one: TVM folds those itself
        try:
            values = [_evaluate(node, [env.get(i) if i else None for i in node.input], opset_of(model)) for env in known]
        except Exception:  # noqa: BLE001 - onnx.reference cannot run it: leave the node to TVM
            continue
        if any(np.size(v) > _MAX_FOLDED_ELEMENTS for outs in values for v in outs):
            continue
        for env, outs in zip(known, values):
            env.update(zip(node.output, outs))
        folded.update(node.output)
    users: dict = {}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            users.setdefault(i, []).append((n, k))
    graph_outputs = {o.name for o in model.graph.output}
    replace = {}
    for name in folded:
        a, b = known[0][name], known[1][name]
        unfolded_users = [(n, k) for n, k in users.get(name, []) if not set(n.output) <= folded]
        if not unfolded_users or name in graph_outputs:
            continue
        if np.array_equal(a, b):
            replace[name] = a
        elif (a.ndim == 1 and all(n.op_type == "Reshape" and k == 1 for n, k in unfolded_users)
              and all(dims.get(n.input[0], [None])[0] is not None and isinstance(dims[n.input[0]][0], str)
                      for n, _ in unfolded_users)):
            diff = np.nonzero(a != b)[0]
            if list(diff) == [0] and a[0] == _PROBES[0] and b[0] == _PROBES[1]:
                replace[name] = np.concatenate([[0], a[1:]]).astype(a.dtype)
    if not replace:
        return False
    keep = [n for n in model.graph.node if not (set(n.output) <= set(replace))]
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in replace.items())
    del model.graph.node[:]
    model.graph.node.extend(keep)
    _remove_dead(model)
    for n in model.graph.node:
        if n.op_type == "Reshape" and n.input[1] in replace and 0 in replace[n.input[1]]:
            for a in n.attribute:
                if a.name == "allowzero":
                    a.i = 0
    del model.graph.value_info[:]
    return True


def _evaluate(node, inputs: list, opset: int) -> list:
    from onnx.reference import ReferenceEvaluator

    feeds = {i: v for i, v in zip(node.input, inputs) if i}
    return ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)


def _remove_dead(model) -> None:
    """Drop nodes none of whose outputs is used (repeatedly) and initializers nothing reads, with their entries
    in ``graph.input`` (graphs before IR version 4 list every initializer there: left behind, a dropped
    initializer's entry would become a model input with no value)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    dropped = {i.name for i in model.graph.initializer if i.name not in used}
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    inputs = [i for i in model.graph.input if i.name not in dropped]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
