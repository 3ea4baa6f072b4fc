"""The QAT model: a torch module that runs a gwq-tvm graph with the compiler's integer arithmetic.

:class:`QATModel` is built from a :class:`~gwq_tvm.graph.Graph` (the canonical
form of the user's ONNX file or ``nn.Module``, batch norm already folded into
the convolutions) and a calibrated :class:`~gwq_tvm.plan.quantplan.QuantPlan`.
Its parameters are

* the float weights and biases of every conv/dense layer (fine-tuned);
* one **mantissa** per plan group (``mantissa[g]``, LSQ-style gradient);
* one real **exponent** per quantized tensor (``exponent[t]``), used as
  ``2**round(e)`` with a straight-through estimator;
* per output channel, the weight scale's real log2 (power-of-two weights, the
  GWQ/pot case, again rounded with an STE) or the weight scale itself (per-layer
  plans with free weight scales).

Every forward recomputes the plan from the parameters (:meth:`QATModel.plan`)
and produces, next to each tensor's real value, its integers exactly as the
compiled program computes them: the integer SFCs, clips and round-half-up
shifts come from :mod:`gwq_tvm.plan.program`, the same functions the realize
pass emits from.  The forward value of a tensor is ``s * q``; its gradient is
the LSQ gradient of ``s * clamp(round(v / s))`` (:func:`fake_quant`).  Run in
float64 (``model.double()``) the integers match the compiled program; float32
is for training speed (its accumulators may round differently in rare cases).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PlanError, UnsupportedOpError
from ..graph import Graph, Node
from ..plan import program as P
from ..plan import scales as S
from ..plan.quantplan import LayerQuant, QuantPlan, TensorQuant
from .fakequant import apply_sfc, fake_quant, grad_scale, round_ste, ste

#: node kinds the QAT model executes (float fallback regions cannot be trained here)
SUPPORTED = frozenset({"input", "conv2d", "dense", "global_avgpool", "avgpool", "add", "concat", "maxpool", "reshape", "relu"})


def _is_pot(scales) -> bool:
    return bool(np.all(S.is_power_of_two(np.asarray(scales, dtype=np.float64))))


def _pads(padding) -> tuple[int, int, int, int]:
    top, left, bottom, right = (int(p) for p in padding)
    return top, left, bottom, right


class QATModel(nn.Module):
    """Trainable fake-quant twin of the integer program of ``plan`` on ``graph``.

    Parameters
    ----------
    graph : Graph
        The quantizable graph (from :func:`gwq_tvm.extract_graph`).
    plan : QuantPlan
        A calibrated plan for ``graph``: it fixes bit-widths, signedness, the
        group of every tensor and the initial mantissas, exponents and weight scales.

    Raises
    ------
    PlanError
        If ``plan`` was made for another graph.
    UnsupportedOpError
        If the graph holds float-fallback ops (named).
    """

    def __init__(self, graph: Graph, plan: QuantPlan):
        super().__init__()
        if plan.fingerprint != graph.fingerprint:
            raise PlanError(f"the QuantPlan was made for graph {plan.fingerprint}, this model is {graph.fingerprint}")
        unsupported = sorted({n.attrs.get("op", n.kind) for n in graph.nodes.values() if n.kind not in SUPPORTED})
        if unsupported:
            raise UnsupportedOpError(f"QAT cannot train models with float-fallback ops: {', '.join(unsupported)}")
        self.graph, self.base_plan = graph, plan
        self.owners = graph.tensors()
        #: tensors the program actually quantizes (a final layer's output stays an int32 accumulator)
        self.quantized = [t for t in self.owners if graph.nodes[t].kind not in P.ACC_KINDS or P.needs_integer_output(graph, t)]
        layers = [n for n, node in graph.nodes.items() if node.weight is not None]
        self.weight = nn.ParameterDict({n: nn.Parameter(torch.from_numpy(graph.nodes[n].weight.astype(np.float32).copy())) for n in layers})
        self.bias = nn.ParameterDict(
            {n: nn.Parameter(torch.from_numpy(graph.nodes[n].bias.astype(np.float32).copy())) for n in layers if graph.nodes[n].bias is not None}
        )
        groups = sorted({plan.tensors[t].group for t in self.owners})
        self.mantissa = nn.ParameterDict({g: nn.Parameter(torch.tensor(float(plan.groups[g]), dtype=torch.float64)) for g in groups})
        self.exponent = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(float(plan.tensors[t].exponent), dtype=torch.float64)) for t in self.quantized}
        )
        self.pot_weights = {n: _is_pot(plan.layers[n].weight_scales) for n in layers}
        #: log2 of power-of-two weight scales, or the free scales themselves
        self.weight_scale = nn.ParameterDict(
            {
                n: nn.Parameter(torch.tensor(np.log2(plan.layers[n].weight_scales) if self.pot_weights[n] else plan.layers[n].weight_scales,
                                             dtype=torch.float64))
                for n in layers
            }
        )

    def set_dtype(self, dtype: torch.dtype) -> "QATModel":
        """Cast the weights and biases (not the float64 scale parameters) to ``dtype``."""
        for p in list(self.weight.values()) + list(self.bias.values()):
            p.data = p.data.to(dtype)
        return self

    # --- the plan the parameters describe -------------------------------
    def plan(self) -> QuantPlan:
        """The QuantPlan of the current parameters (fingerprint of the graph the model was built from).

        Mantissas are normalised into ``[1, 2)`` (the power of two moves into
        the exponents), so every member of a group shares one mantissa.
        """
        base = self.base_plan
        groups, owned = {}, {}
        for t in self.owners:
            tq = base.tensors[t]
            mu = float(self.mantissa[tq.group].detach())
            m, k = S.split_scale(mu)
            groups[tq.group] = m
            e = int(round(float(self.exponent[t].detach()))) if t in self.exponent else tq.exponent
            owned[t] = TensorQuant(tq.bits, tq.signed, tq.group, e + k)
        tensors = {n: owned[self.graph.tensor_of(n)] for n in self.graph.nodes}
        layers = {}
        for n, layer in base.layers.items():
            p = self.weight_scale[n].detach().double().numpy()
            ws = np.exp2(np.round(p)) if self.pot_weights[n] else np.abs(p)
            layers[n] = LayerQuant(layer.weight_bits, layer.granularity, tuple(float(v) for v in ws))
        return QuantPlan(base.fingerprint, base.config, groups, tensors, layers, base.input_shape)

    @torch.no_grad()
    def normalize_(self) -> None:
        """Move each mantissa back into ``[1, 2)`` by shifting its members' exponents (values unchanged)."""
        for g, mu in self.mantissa.items():
            if not float(mu) > 0:
                raise PlanError(f"group {g}: the learned mantissa became {float(mu)} (learning rate too high?)")
            k = math.floor(math.log2(float(mu)))
            if k:
                mu.mul_(2.0**-k)
                for t in self.quantized:
                    if self.base_plan.tensors[t].group == g:
                        self.exponent[t].add_(k)

    # --- differentiable scales ------------------------------------------
    def _act_scale(self, t: str, dtype) -> torch.Tensor:
        node = self.graph.nodes[t]
        tq = self.base_plan.tensors[t]
        g = 1.0 / math.sqrt(max(node.elements, 1) * S.qrange(tq.bits, tq.signed)[1])
        s = self.mantissa[tq.group].to(dtype) * torch.exp2(round_ste(self.exponent[t].to(dtype)))
        return grad_scale(s, g)

    def _weight_scale(self, n: str, dtype) -> torch.Tensor:
        p = self.weight_scale[n].to(dtype)
        s = torch.exp2(round_ste(p)) if self.pot_weights[n] else p.abs()
        w = self.weight[n]
        g = 1.0 / math.sqrt(w[0].numel() * S.weight_qmax(self.base_plan.layers[n].weight_bits))
        return grad_scale(s, g)

    # --- forward ----------------------------------------------------------
    def forward(self, x: torch.Tensor, return_int: bool = False):
        """Logits of the quantized program (and, with ``return_int``, the integer outputs).

        The integer outputs are what the compiled program dequantizes: the int32
        accumulator of a final conv/dense layer, else the output tensor's integers.
        """
        plan = self.plan()
        run = _Run(self, plan, x.dtype)
        for name, node in self.graph.nodes.items():
            getattr(run, f"node_{node.kind}")(node, x)
        outs = [run.output(n) for n in self.graph.outputs]
        logits = outs[0][0] if len(outs) == 1 else tuple(o[0] for o in outs)
        if not return_int:
            return logits
        ints = outs[0][1] if len(outs) == 1 else tuple(o[1] for o in outs)
        return logits, ints


class _Run:
    """One forward pass: real values and integers of every node."""

    def __init__(self, model: QATModel, plan: QuantPlan, dtype):
        self.m, self.plan, self.dtype, self.graph = model, plan, dtype, model.graph
        self.x: dict[str, torch.Tensor] = {}  # real values (differentiable)
        self.q: dict[str, torch.Tensor] = {}  # integers (int64)
        self.acc: dict[str, tuple] = {}  # final accumulators: (v, acc_int, unit)
        self.scales: dict[str, torch.Tensor] = {}

    def s(self, name: str) -> torch.Tensor:
        t = self.graph.tensor_of(name)
        if t not in self.scales:
            self.scales[t] = self.m._act_scale(t, self.dtype)
        return self.scales[t]

    def _store(self, node: Node, v: torch.Tensor, q: torch.Tensor, qmin: int, qmax: int):
        self.q[node.name] = q
        self.x[node.name] = fake_quant(v, self.s(node.name), q, qmin, qmax)

    # -- nodes
    def node_input(self, node: Node, x: torch.Tensor):
        s = self.plan.scale(node.name)
        qmin, qmax = S.qrange(self.plan.tensors[node.name].bits, self.plan.tensors[node.name].signed)
        # The compiled program quantizes in float32: floor(x / s + 0.5) with s a float32 constant.
        x32 = x.detach().to(torch.float32)
        q = torch.floor(x32 / torch.tensor(s, dtype=torch.float32) + torch.tensor(0.5, dtype=torch.float32))
        q = torch.clamp(q, qmin, qmax).to(torch.int64)
        self._store(node, x.to(self.dtype), q, qmin, qmax)

    def _layer(self, node: Node):
        """Fake-quantized weight and bias (differentiable) and the accumulator unit."""
        n = node.name
        src = self.graph.tensor_of(node.inputs[0])
        layer = self.plan.layers[n]
        ws = self.m._weight_scale(n, self.dtype)
        w = self.m.weight[n].to(self.dtype)
        shape = (-1,) + (1,) * (w.ndim - 1)
        qmax = S.weight_qmax(layer.weight_bits)
        wq = ws.reshape(shape) * torch.clamp(round_ste(w / ws.reshape(shape)), -qmax, qmax)
        unit = self.s(src) * ws
        b = None
        if n in self.m.bias:
            b = self.m.bias[n].to(self.dtype)
            b = unit * round_ste(b / unit)
        acc_scale = self.plan.scale(src) * np.asarray(layer.weight_scales, dtype=np.float64)
        return wq, b, unit, acc_scale

    def _finish_acc(self, node: Node, v: torch.Tensor, acc_int: torch.Tensor, acc_scale: np.ndarray, unit: torch.Tensor):
        if not P.needs_integer_output(self.graph, node.name):
            self.acc[node.name] = (v, acc_int, unit)
            return
        rq = P.requant(node, P.Accumulator(np.asarray(acc_scale, dtype=np.float64), 0), self.plan)
        q = torch.clamp(apply_sfc(acc_int, rq.sfc), rq.qmin, rq.qmax)
        self._store(node, v, q, rq.qmin, rq.qmax)

    @staticmethod
    def _round_int(v: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        shape = [1] * v.ndim
        if unit.ndim and unit.numel() > 1:
            shape[1] = unit.numel()
        return torch.round(v.detach() / unit.detach().reshape(shape)).to(torch.int64)

    def node_conv2d(self, node: Node, _x):
        a = node.attrs
        wq, b, unit, acc_scale = self._layer(node)
        xin = self.x[node.inputs[0]]
        top, left, bottom, right = _pads(a["padding"])
        if (top, left) != (bottom, right):
            xin, pad = F.pad(xin, (left, right, top, bottom)), 0
        else:
            pad = (top, left)
        v = F.conv2d(xin, wq, b, stride=tuple(a["strides"]), padding=pad, dilation=tuple(a["dilation"]), groups=a["groups"])
        self._finish_acc(node, v, self._round_int(v, unit), acc_scale, unit)

    def node_dense(self, node: Node, _x):
        wq, b, unit, acc_scale = self._layer(node)
        v = F.linear(self.x[node.inputs[0]], wq, b)
        self._finish_acc(node, v, self._round_int(v, unit), acc_scale, unit)

    def node_global_avgpool(self, node: Node, _x):
        src = node.inputs[0]
        keep = node.attrs["keepdims"]
        window = self.graph.nodes[src].shape[2] * self.graph.nodes[src].shape[3]
        v = self.x[src].mean(dim=(2, 3), keepdim=keep)
        acc_int = self.q[src].sum(dim=(2, 3), keepdim=keep)
        unit = self.s(src) / window
        self._finish_acc(node, v, acc_int, np.array([self.plan.scale(self.graph.tensor_of(src)) / window]), unit)

    def node_avgpool(self, node: Node, _x):
        src = node.inputs[0]
        kh, kw = node.attrs["pool_size"]
        top, left, bottom, right = _pads(node.attrs["padding"])
        stride = tuple(node.attrs["strides"])

        def pool(t):
            t = F.pad(t, (left, right, top, bottom))
            return F.avg_pool2d(t, (kh, kw), stride)

        window = kh * kw
        v = pool(self.x[src])
        acc_int = torch.round(pool(self.q[src].to(torch.float64)) * window).to(torch.int64)
        unit = self.s(src) / window
        self._finish_acc(node, v, acc_int, np.array([self.plan.scale(self.graph.tensor_of(src)) / window]), unit)

    def node_add(self, node: Node, _x):
        p = self.plan.config.add_precision_bits
        total = None
        for src, sfc in zip(node.inputs, P.add_inputs(node, self.plan)):
            t = apply_sfc(self.q[src], sfc)
            total = t if total is None else total + t
        if p > 0:
            total = (total + (1 << (p - 1))) >> p
        qmin, qmax = P.out_range(node, self.plan)
        v = self.x[node.inputs[0]] + self.x[node.inputs[1]]
        self._store(node, v, torch.clamp(total, qmin, qmax), qmin, qmax)

    def node_concat(self, node: Node, _x):
        qmin, qmax = P.out_range(node, self.plan)
        axis = node.attrs["axis"]
        parts = []
        for src, sfc in zip(node.inputs, P.concat_inputs(node, self.plan)):
            if sfc.kind == "identity" and self.plan.tensors[src] == self.plan.tensors[node.name]:
                parts.append(self.q[src])
            else:
                parts.append(torch.clamp(apply_sfc(self.q[src], sfc), qmin, qmax))
        v = torch.cat([self.x[src] for src in node.inputs], dim=axis)
        self._store(node, v, torch.cat(parts, dim=axis), qmin, qmax)

    def node_maxpool(self, node: Node, _x):
        a = node.attrs
        top, left, bottom, right = _pads(a["padding"])
        if (top, left) != (bottom, right):
            raise UnsupportedOpError(f"{node.name}: QAT supports symmetric max-pool padding only")

        def pool(t):
            return F.max_pool2d(t, tuple(a["pool_size"]), tuple(a["strides"]), (top, left), tuple(a["dilation"]), ceil_mode=bool(a["ceil_mode"]))

        src = node.inputs[0]
        self.x[node.name] = pool(self.x[src])
        self.q[node.name] = pool(self.q[src].to(torch.float64)).to(torch.int64)

    def node_reshape(self, node: Node, _x):
        src = node.inputs[0]
        shape = (-1,) + tuple(int(d) for d in node.shape[1:])
        self.x[node.name] = self.x[src].reshape(shape)
        self.q[node.name] = self.q[src].reshape(shape)

    def node_relu(self, node: Node, _x):
        qmin, qmax = P.out_range(node, self.plan)
        src = node.inputs[0]
        q = torch.clamp(self.q[src], qmin, qmax)
        self.q[node.name] = q
        self.x[node.name] = fake_quant(self.x[src], self.s(node.name), q, qmin, qmax)

    def output(self, name: str):
        """(real output, integer output) as the compiled program dequantizes them (float32 arithmetic)."""
        node = self.graph.nodes[name]
        if name in self.acc:
            v, acc_int, unit = self.acc[name]
            unit32 = unit.detach().to(torch.float32)
            shape = [1] * v.ndim
            if unit32.ndim and unit32.numel() > 1:
                shape[1] = unit32.numel()
            hard = acc_int.to(torch.float32) * unit32.reshape(shape)
            if node.act is not None:
                hard = torch.clamp(hard, node.act[0], min(node.act[1], 3.0e38))
                v = torch.clamp(v, node.act[0], node.act[1])
            return ste(v, hard.to(v.dtype)), acc_int
        q = self.q[name]
        hard = q.to(torch.float32) * torch.tensor(self.plan.scale(name), dtype=torch.float32)
        return ste(self.x[name], hard.to(self.x[name].dtype)), q


def float_forward(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The graph's float model in torch (its own weights, no quantization): the distillation teacher."""
    vals: dict[str, torch.Tensor] = {}

    def act(node, y):
        return torch.clamp(y, node.act[0], node.act[1]) if node.act is not None else y

    for name, node in graph.nodes.items():
        a = node.attrs
        ins = [vals[i] for i in node.inputs]
        if node.kind == "input":
            y = x
        elif node.kind == "conv2d":
            top, left, bottom, right = _pads(a["padding"])
            w = torch.from_numpy(node.weight.astype(np.float32))
            b = torch.from_numpy(node.bias.astype(np.float32)) if node.bias is not None else None
            y = F.conv2d(F.pad(ins[0], (left, right, top, bottom)), w, b, stride=tuple(a["strides"]), dilation=tuple(a["dilation"]),
                         groups=a["groups"])
        elif node.kind == "dense":
            b = torch.from_numpy(node.bias.astype(np.float32)) if node.bias is not None else None
            y = F.linear(ins[0], torch.from_numpy(node.weight.astype(np.float32)), b)
        elif node.kind == "global_avgpool":
            y = ins[0].mean(dim=(2, 3), keepdim=a["keepdims"])
        elif node.kind == "avgpool":
            top, left, bottom, right = _pads(a["padding"])
            y = F.avg_pool2d(F.pad(ins[0], (left, right, top, bottom)), tuple(a["pool_size"]), tuple(a["strides"]))
        elif node.kind == "add":
            y = ins[0] + ins[1]
        elif node.kind == "concat":
            y = torch.cat(ins, dim=a["axis"])
        elif node.kind == "maxpool":
            top, left, _, _ = _pads(a["padding"])
            y = F.max_pool2d(ins[0], tuple(a["pool_size"]), tuple(a["strides"]), (top, left), tuple(a["dilation"]), ceil_mode=bool(a["ceil_mode"]))
        elif node.kind == "reshape":
            y = ins[0].reshape((-1,) + tuple(int(d) for d in node.shape[1:]))
        elif node.kind == "relu":
            lo, hi = node.act if node.act is not None else (0.0, math.inf)
            y = torch.clamp(ins[0], lo, hi)
            vals[name] = y
            continue
        else:
            raise UnsupportedOpError(f"QAT cannot run node {name} ({node.kind})")
        vals[name] = act(node, y)
    outs = [vals[o] for o in graph.outputs]
    return outs[0] if len(outs) == 1 else tuple(outs)


def prepare_qat(model, calib_data, config, *, input_shape=None) -> QATModel:
    """Calibrate and plan ``model`` (ONNX path or an ordinary ``torch.nn.Module``), then wrap it for QAT.

    The module is imported through ``torch.export`` (batch norm folded into the
    convolutions); the user does not rewrite it.  Equivalent to
    ``QATModel(q.graph, q.plan)`` with ``q = gwq_tvm.quantize(model, calib_data, config)``.
    """
    from ..api import quantize

    q = quantize(model, calib_data, config, input_shape=input_shape)
    return QATModel(q.graph, q.plan)
