"""Relax pass: put the integer convs of a realized program in a packed, target-shaped layout.

Run it on a realized integer program (after :class:`RealizeIntegerProgram`),
before ``LegalizeOps``.  Every int8/uint8 x int8 -> int32 ``nn.conv2d`` with
a constant weight, and every such dense (``matmul`` by a constant, as the
1x1 conv of ``x[B, K, 1, 1]``), becomes a ``call_tir`` of a packed kernel
(:mod:`gwq_tvm.schedules.compute`), shaped for a kernel family
(:class:`gwq_tvm.schedules.spec.KernelSpec`: x86 AMX, x86 VNNI, x86 AVX-VNNI, x86 AVX2, aarch64 i8mm, sdot, NEON):

* activations in NCHW[cb]c (``cb`` = 16, or 4/8/12 for thin inputs), conv
  outputs in NCHW16c, weights packed to ``OIHW[cb/k]i16o[k]i`` here, at compile
  time (``k`` = 8 for i8mm, 4 for the dot-product instructions, 2 for AVX2, 1 for NEON
  lanes; int16 for AVX2, int8 otherwise), each conv by the spec its weight
  selects (:meth:`~gwq_tvm.schedules.spec.KernelSpec.for_weight`: AVX2 convs
  whose weights fit 7 bits take the VNNI layout); the convs an AMX family covers
  (:func:`_tile_rows`) take NCHW64c inputs and ``OIHW16i64o4i`` weights and
  give NCHW64c outputs, the others stay as above;
* a grouped conv whose groups fill whole output blocks is one packed kernel
  (each output block reads its group's input blocks), one of at most 8
  groups that do not is split into a packed conv per group, concatenated;
  a transposed conv becomes the packed conv of
  its zero-inserted input (flipped taps), and a conv1d the packed conv2d of
  its input viewed as one row, so all of them run the family's kernels;
* the SFC epilogue (add/subtract/multiply/shifts/clip/astype with scalar or
  per-channel constants), residual adds, ReLU clips, max pooling and the
  global-average-pool sum stay in the packed layout, so consecutive convs
  never leave it;
* layout transforms appear only at the edges: where a tensor enters the
  packed region (the network input) or leaves it (flatten, a dense's own
  output, outputs, any op this pass does not know).

Activations of the other signedness than the family's instruction takes
(int8 for VNNI's and i8mm usmmla's uint8 x int8: the network input, residual sums without
ReLU; uint8 for sdot's int8 x int8: everything after a ReLU) take the same
kernel: it reads ``x + offset`` (offset +128 / -128) padded with ``offset``,
and the pass subtracts ``offset * sum(w)`` per output channel, which is exact.

The rewrite is value-preserving bit for bit: the program computes the same
integers as before, only stored in another layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..ir import const_value as _const
from . import compute as C
from . import layout as L
from .amx import TILE_K, TILE_N, tile_rows
from .spec import X86_VNNI, KernelSpec

_ELEMENTWISE_UNARY = frozenset({"relax.astype", "relax.clip", "relax.nn.relu"})
_ELEMENTWISE_BINARY = frozenset(
    {"relax.add", "relax.subtract", "relax.multiply", "relax.right_shift", "relax.left_shift", "relax.maximum",
     "relax.minimum"}
)
_INT8 = ("int8", "uint8")
MAX_SPLIT_GROUPS = 8
"""Most groups a grouped conv is split into when it cannot be one packed kernel (its groups' outputs do not
fill whole output blocks): each group is a kernel of its own, with its own unpack, and more of them cost
more in launches and compile time than they save (a 16-lane block then holds few real channels)."""


@dataclass(frozen=True)
class _Packed:
    """A tensor available in NCHW[block]c: ``expr`` has shape (N, Cp/block, H, W, block)."""

    expr: relax.Expr
    channels: int
    block: int


def _static_nchw(expr) -> tuple | None:
    """(C, H, W) of a 4-D tensor whose C, H and W are static, else ``None`` (batch may be symbolic)."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None or ty.ndim != 4:
        return None
    dims = ty.shape.values
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims[1:]):
        return None
    return tuple(int(d) for d in dims[1:])


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _accumulator_fits_int32(w: np.ndarray, spec: KernelSpec) -> bool:
    """Can the packed kernel accumulate this conv in int32 without any intermediate overflow?

    The kernel sums products of up to ``spec.max_product()`` each (``255 * 128``
    for uint8 x int8, an offset input included).  For ``K = C * KH * KW``
    beyond ~65k (never in CNNs) the plain conv is kept rather than rely on
    wrap-around.
    """
    return spec.max_product() * int(np.prod(w.shape[1:])) < 2**31


def _conv_kind(call: relax.Call, spec: KernelSpec, w: np.ndarray | None) -> str | None:
    """``"packed"``, ``"depthwise"``, ``"grouped"``, ``"split"`` or ``None`` (keep the conv as it is).

    A grouped conv that is not depthwise is ``"grouped"`` (one packed kernel
    whose output blocks each read their group's input blocks) when every group,
    or every merge of 2 or 4 neighbouring groups (:func:`_merge_factor`), has
    whole 16-lane output blocks and a channel block divides its inputs
    (:func:`_group_block`); else ``"split"`` (one packed conv per group,
    :meth:`_Packer.split_conv2d`) when it has at most :data:`MAX_SPLIT_GROUPS`
    groups; otherwise (e.g. 16 groups of 2 channels) it stays NCHW.
    """
    a = call.attrs
    data = call.args[0]
    chw = _static_nchw(data)
    if (w is None or chw is None or w.dtype != np.int8 or w.ndim != 4 or _dtype(data) not in _INT8
            or str(a.out_dtype) != "int32" or (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW")):
        return None
    groups, channels = int(a.groups), chw[0]
    if not _accumulator_fits_int32(w, spec):
        return None
    if groups == 1:
        return "packed"
    if groups == channels == w.shape[0] and w.shape[1] == 1:
        return "depthwise"
    if _merge_factor(groups, w.shape[0] // groups, w.shape[1], spec) is not None:
        return "grouped"
    return "split" if groups <= MAX_SPLIT_GROUPS else None


def _group_block(group_channels: int, spec: KernelSpec) -> int | None:
    """The largest channel block (16, 12, 8 or 4, a multiple of the family's reduction depth) that divides a
    group's input channels, so that no block straddles two groups; ``None`` if there is none."""
    return next((b for b in (16, 12, 8, 4) if group_channels % b == 0 and b % spec.k_block == 0), None)


def _merge_factor(groups: int, group_outputs: int, group_inputs: int, spec: KernelSpec) -> int | None:
    """How many neighbouring groups (1, 2 or 4) to merge (:func:`.layout.merge_groups`) so that each merged
    group fills whole 16-lane output blocks and a channel block divides its inputs; ``None`` if none does.
    Merging ``f`` groups costs ``f`` times the multiplies (most by zero): ResNeXt's groups of 4 channels merge
    by 4, RegNet's of 8 by 2."""
    return next((f for f in (1, 2, 4) if groups % f == 0 and f * group_outputs % L.OC_BLOCK == 0
                 and _group_block(f * group_inputs, spec) is not None), None)


def _tile_rows(call: relax.Call, spec: KernelSpec, w: np.ndarray) -> int | None:
    """Rows (output pixels) of the matrix tiles of a ``"packed"`` conv, ``None`` when ``spec`` has no tiles or
    they do not fit it (then it is built as the vector families build it).

    Tiles need: stride 1 (a tile's rows are consecutive input pixels, one
    row stride apart), at least :data:`.amx.TILE_K` input channels (fewer
    would mostly multiply padding), and an output width with a divisor from
    4 to 16 for the rows, or a width below 4 (a dense's 1 row).
    """
    if spec.tile_intrinsic is None or w.shape[1] < TILE_K or tuple(int(s) for s in call.attrs.strides) != (1, 1):
        return None
    a = call.attrs
    _, _, width = _static_nchw(call.args[0])
    pad = [int(p) for p in a.padding]
    out_w = C._out_size(width, pad[1], pad[3], w.shape[3], 1, int(a.dilation[1]))
    rows = tile_rows(out_w)
    return rows if rows >= min(out_w, 4) else None


class _Packer:
    """Re-emits ``main``'s bindings, keeping each tensor in NCHW, packed, or both (lazily)."""

    def __init__(self, bb: relax.BlockBuilder, spec: KernelSpec, int4: bool = True):
        self.bb = bb
        self.spec = spec
        self.int4 = int4
        self.plain: dict = {}
        self.packed: dict = {}
        #: POST weights ``take(table, codes)`` of constants: var -> (table, codes), emitted only where used unpacked
        self.lookups: dict = {}

    # --- the two forms of a value -------------------------------------
    def plain_of(self, expr):
        """``expr`` rewritten with every variable in its original layout."""
        if isinstance(expr, relax.Var):
            if expr not in self.plain and expr in self.lookups:
                table, codes = self.lookups[expr]
                self.plain[expr] = self.bb.emit(_lookup(table, codes))
            if expr not in self.plain:
                p = self.packed[expr]
                self.plain[expr] = self.bb.emit_te(C.unpack_nchwc, p.expr, p.channels, primfunc_name_hint="gwq_unpack")
            return self.plain[expr]
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.plain_of(f) for f in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self.plain_of(expr.tuple_value), expr.index)
        if isinstance(expr, relax.Call):
            return relax.Call(expr.op, [self.plain_of(a) for a in expr.args], expr.attrs, expr.ty_args)
        return expr

    def packed_of(self, var, block: int | None = None) -> _Packed:
        """``var`` in NCHW[block]c, packing it (an edge transform) when only NCHW exists."""
        p = self.packed.get(var)
        if p is not None and (block is None or p.block == block):
            return p
        x = self.plain_of(var)
        channels = _static_nchw(x)[0]
        block = block or L.channel_block(channels, self.spec.k_block)
        expr = self.bb.emit_te(C.pack_nchwc, x, block, primfunc_name_hint="gwq_pack")
        p = _Packed(expr, channels, block)
        if var not in self.packed:
            self.packed[var] = p
        return p

    # --- bindings ------------------------------------------------------
    def rewrite(self, var, value) -> None:
        if isinstance(value, relax.Var):  # an alias keeps whatever forms its source has
            for table in (self.plain, self.packed):
                if value in table:
                    table[var] = table[value]
            return
        handler = None
        lookup = _weight_lookup(value)
        if lookup is not None:  # packed by the conv/dense that reads it (the codes, not the looked-up weights)
            self.lookups[var] = lookup
            return
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            handler = _HANDLERS.get(value.op.name)
        out = handler(self, value) if handler else None
        if isinstance(out, _Packed):
            self.packed[var] = out
        elif out is not None:  # a handler that rewrote the op but keeps its result in the original layout
            self.plain[var] = out
        else:
            self.plain[var] = self.bb.emit(self.plain_of(value))

    def weight_of(self, expr) -> tuple:
        """``(w, lookup)``: the int8 values of a conv/dense weight (``None`` if not constant) and, for a POST
        weight ``take(table, codes)``, the ``(table, codes)`` pair (``None`` for a stored constant)."""
        w = _const(expr)
        if w is not None or not isinstance(expr, relax.Var) or expr not in self.lookups:
            return w, None
        table, codes = self.lookups[expr]
        return table[codes], (table, codes)

    def packed_weight(self, w: np.ndarray, lookup, pack, dtype: str):
        """The packed weight operand: ``pack(w)`` as a constant, or for a POST weight the lookup
        ``take(table, pack(codes))`` emitted into the program (packing moves codes like weights and pads
        with code 0, whose level is 0, so it commutes with the lookup)."""
        if lookup is None:
            return relax.const(pack(w).astype(dtype), dtype)
        table, codes = lookup
        return self.bb.emit(_lookup(table.astype(dtype), pack(codes)))

    def int4_weight(self, w: np.ndarray, lookup, spec: KernelSpec | None = None) -> tuple | None:
        """``(table16, codes)`` when this family has an int4 step and the weight fits 4-bit codes, else ``None``.

        A POST weight ``take(table, codes)`` with at most 16 levels keeps its codes and its table (padded
        to 16 entries); a stored weight whose values all lie in [-8, 7] (a uniform weight at 4 bits or
        fewer, :attr:`gwq_tvm.plan.quantplan.WeightQuant.storage` ``"int4"``) becomes nibble codes with
        the sign extension table.  Either way ``table16[codes] == w`` exactly, so the rewrite is lossless.
        """
        spec = spec or self.spec  # the conv's (KernelSpec.for_weight), whose int4 step runs it
        if not self.int4 or spec.int4_intrinsic is None or spec.intrinsic is None:
            return None  # (a family with its dot-product step removed, e.g. an aarch64 layout run on x86, has no int4 step)
        if lookup is not None:
            table, codes = lookup
            if table.size > 16 or (codes.size and codes.max() >= table.size):
                return None
            return np.concatenate([table, np.zeros(16 - table.size, np.int8)]).astype(np.int8), codes
        if w.size and (w.min() < -8 or w.max() > 7):
            return None
        return L.sign_extension_table(), L.int4_codes(w)

    def conv2d(self, call, weight=None) -> _Packed | None:
        data = call.args[0]
        w, lookup = weight if weight is not None else self.weight_of(call.args[1])
        kind = _conv_kind(call, self.spec, w)
        if kind is None:
            return None
        if kind == "split":
            return self.split_conv2d(call, w, lookup)
        a = call.attrs
        geometry = dict(strides=[int(s) for s in a.strides], padding=[int(p) for p in a.padding],
                        dilation=[int(d) for d in a.dilation])
        tiles = kind == "packed" and _tile_rows(call, self.spec, w) is not None
        block = TILE_K if tiles else None
        if kind == "grouped":  # merged groups fill whole output blocks; input blocks must not straddle groups
            groups = int(a.groups)
            factor = _merge_factor(groups, w.shape[0] // groups, w.shape[1], self.spec)
            if factor > 1:
                w = L.merge_groups(w, groups, factor)
                lookup = None if lookup is None else (lookup[0], L.merge_groups(lookup[1], groups, factor))
            p = self.packed.get(data) if isinstance(data, relax.Var) else None
            block = None if p is not None and w.shape[1] % p.block == 0 else _group_block(w.shape[1], self.spec)
            geometry["groups"] = groups // factor
        src = self.packed_of(data, block)
        if kind == "depthwise":
            wp = self.packed_weight(w, lookup, lambda v: L.pack_depthwise_weight(v, src.block), "int8")
            y = self.bb.emit_te(C.depthwise_conv2d_nchwc, src.expr, wp, **geometry, primfunc_name_hint="gwq_dwconv2d")
            return _Packed(y, w.shape[0], src.block)
        in_block, out_block = (TILE_K, TILE_N) if tiles else (src.block, L.OC_BLOCK)
        spec = self.spec if tiles else self.spec.for_weight(w)  # AVX2: the vpmaddubsw step for 7-bit weights
        offset = spec.input_offset(_dtype(data))
        nibbles = None if tiles else self.int4_weight(w, lookup, spec)
        if nibbles is not None:  # two codes per byte, decoded in the kernel's registers
            table, codes = nibbles
            wp = relax.const(L.pack_conv_weight_int4(codes, in_block), "uint8")
            y = self.bb.emit_te(C.conv2d_nchwc_int8, src.expr, wp, **geometry, offset=offset,
                                table=tuple(int(t) for t in table), primfunc_name_hint="gwq_conv2d_int4")
        else:
            wp = self.packed_weight(w, lookup, lambda v: L.pack_conv_weight(v, in_block, spec.k_block, out_block),
                                    spec.weight_dtype)
            y = self.bb.emit_te(C.conv2d_nchwc_int8, src.expr, wp, **geometry, offset=offset,
                                widen=spec.operand_dtype, primfunc_name_hint="gwq_conv2d")
        if offset:
            comp = L.offset_compensation(w, offset).astype(np.int32).reshape(1, -1, 1, 1)
            comp = L.pack_channel_const(comp, w.shape[0], out_block)
            y = self.bb.emit(relax.op.subtract(y, relax.const(comp, "int32")))
        return _Packed(y, w.shape[0], out_block)

    def split_conv2d(self, call, w: np.ndarray, lookup) -> _Packed | relax.Expr:
        """A grouped conv (not depthwise) as one packed conv per group, concatenated along the channel axis.

        ``y[:, g*Og : (g+1)*Og] = conv2d(x[:, g*Cg : (g+1)*Cg], w[g*Og : (g+1)*Og])`` for each group ``g``
        (``Cg = C/groups`` input, ``Og = O/groups`` output channels).  Each group's input is a slice of the
        packed input along its block axis when the block divides ``Cg`` (no copy of the map), else a slice
        of the plain input, packed for that group.  The groups' outputs concatenate in the packed layout
        when ``Og`` fills whole output blocks; else each is unpacked and they concatenate in NCHW.
        """
        a = call.attrs
        data = call.args[0]
        groups = int(a.groups)
        cg, og = w.shape[1], w.shape[0] // groups
        src = self.packed.get(data) if isinstance(data, relax.Var) else None
        batch, _, height, width = data.ty.shape.values
        outs = []
        for g in range(groups):
            if src is not None and cg % src.block == 0:
                part = self.bb.emit(relax.op.strided_slice(src.expr, axes=[1], begin=[g * cg // src.block],
                                                           end=[(g + 1) * cg // src.block]))
                x = self._packed_var(_Packed(part, cg, src.block), (batch, cg, height, width), _dtype(data))
            else:
                x = self.bb.emit(relax.op.strided_slice(self.plain_of(data), axes=[1], begin=[g * cg],
                                                        end=[(g + 1) * cg]))
                self.plain[x] = x
            rows = slice(g * og, (g + 1) * og)
            part_lookup = None if lookup is None else (lookup[0], lookup[1][rows])
            conv = relax.op.nn.conv2d(x, relax.const(w[rows], "int8"), [int(s) for s in a.strides],
                                      [int(p) for p in a.padding], [int(d) for d in a.dilation], out_dtype="int32")
            outs.append(self.conv2d(conv, (w[rows], part_lookup)))
        if og % outs[0].block:  # padded blocks: concatenate the groups in NCHW
            plain = [self.bb.emit_te(C.unpack_nchwc, o.expr, og, primfunc_name_hint="gwq_unpack") for o in outs]
            return self.bb.emit(relax.op.concat(plain, axis=1))
        y = self.bb.emit(relax.op.concat([o.expr for o in outs], axis=1))
        return _Packed(y, w.shape[0], outs[0].block)

    def conv2d_transpose(self, call) -> _Packed | None:
        """A transposed conv as a packed conv over its zero-inserted input (:func:`.compute.dilate_nchwc`).

        ``conv2d_transpose(x, w)`` (stride ``s``, dilation ``d``, padding ``p``, output padding ``q``)
        is ``conv2d(dilate(x, s), w')`` with ``w'`` = :func:`.layout.transposed_conv_as_conv` of ``w``,
        dilation ``d`` and padding ``d * (K - 1) - p`` (``+ q`` at the far end): the same integer sums.
        The zero-inserted input costs ``s**2`` times the transposed conv's multiplies, most of them by
        zero, in a kernel that runs the family's dot-product instruction.  A padding beyond
        ``d * (K - 1)`` (a cropping conv) keeps the op as it is.
        """
        a = call.attrs
        data, weight = call.args
        w, lookup = self.weight_of(weight)
        chw = _static_nchw(data)
        if (w is None or w.ndim != 4 or chw is None or _dtype(data) not in _INT8 or str(a.out_dtype) != "int32"
                or (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "IOHW", "NCHW")):
            return None
        groups = int(a.groups)
        (sh, sw), (dh, dw) = ([int(v) for v in a.strides], [int(v) for v in a.dilation])
        top, left, bottom, right = (int(p) for p in a.padding)
        oph, opw = (int(v) for v in a.output_padding)
        kh, kw = w.shape[2:]
        pad = [dh * (kh - 1) - top, dw * (kw - 1) - left, dh * (kh - 1) - bottom + oph, dw * (kw - 1) - right + opw]
        if min(pad) < 0:
            return None
        wc = L.transposed_conv_as_conv(w, groups)
        if lookup is not None:
            lookup = (lookup[0], L.transposed_conv_as_conv(lookup[1], groups))
        c, h, wd = chw
        shape = (data.ty.shape.values[0], c, (h - 1) * sh + 1, (wd - 1) * sw + 1)
        x = relax.Var("gwq_dilated", relax.TensorType(shape, _dtype(data))) if (sh, sw) != (1, 1) else data
        conv = relax.op.nn.conv2d(x, relax.const(wc, "int8"), padding=pad, dilation=[dh, dw], groups=groups,
                                  out_dtype="int32")
        if _conv_kind(conv, self.spec, wc) is None:
            return None
        if x is not data:
            src = self.packed_of(data)
            dilated = self.bb.emit_te(C.dilate_nchwc, src.expr, sh, sw, primfunc_name_hint=C.DILATE_BLOCK)
            self.packed[x] = _Packed(dilated, src.channels, src.block)
        return self.conv2d(conv, (wc, lookup))

    def conv1d(self, call) -> relax.Expr | None:
        """A conv1d as the packed conv2d of its input viewed as ``(N, C, 1, L)`` and a ``(O, C/g, 1, K)`` kernel.

        ``conv1d(x, w)[n, o, j] = conv2d(x[:, :, None, :], w[:, :, None, :])[n, o, 0, j]`` with the 1-D
        stride, dilation and padding on the width axis.  The result is unpacked and squeezed back to NCW
        at once, so the epilogue (per-channel constants of shape ``(1, C, 1)``) follows in the plain layout.
        """
        data, weight = call.args
        w, lookup = self.weight_of(weight)
        a = call.attrs
        ty = data.ty
        if (w is None or w.ndim != 3 or not isinstance(ty, relax.TensorType) or ty.ndim != 3 or ty.shape is None
                or (a.data_layout, a.kernel_layout, a.out_layout) != ("NCW", "OIW", "NCW")):
            return None
        batch, c, length = ty.shape.values
        view = relax.Var("gwq_rows", relax.TensorType((batch, c, 1, length), _dtype(data)))
        left, right = (int(p) for p in a.padding)
        w2 = w[:, :, None, :]
        conv = relax.op.nn.conv2d(view, relax.const(w2, "int8"), strides=[1, int(a.strides[0])],
                                  padding=[0, left, 0, right], dilation=[1, int(a.dilation[0])], groups=int(a.groups),
                                  out_dtype=str(a.out_dtype))
        if _conv_kind(conv, self.spec, w2) is None:
            return None
        x4 = self.bb.emit(relax.op.expand_dims(self.plain_of(data), axis=2))
        self.plain[x4] = x4
        y = self.conv2d(relax.op.nn.conv2d(x4, conv.args[1], conv.attrs.strides, conv.attrs.padding,
                                           conv.attrs.dilation, conv.attrs.groups, out_dtype=str(a.out_dtype)),
                        (w2, None if lookup is None else (lookup[0], lookup[1][:, :, None, :])))
        if isinstance(y, _Packed):
            y = self.bb.emit_te(C.unpack_nchwc, y.expr, y.channels, primfunc_name_hint="gwq_unpack")
        return self.bb.emit(relax.op.squeeze(y, axis=[2]))

    def _packed_var(self, packed: _Packed, shape, dtype: str) -> relax.Var:
        """A variable standing for ``packed`` in its NCHW ``shape``, known only in its packed form (its plain
        form, should an op ask for it, is an unpack)."""
        var = relax.Var("gwq_part", relax.TensorType(shape, dtype))
        self.packed[var] = packed
        return var

    def matmul(self, call) -> relax.Expr | None:
        """An int8 dense ``x[B, K] @ w[K, N]`` (constant ``w``) as the packed 1x1 conv of ``x[B, K, 1, 1]``.

        The same kernel and instruction as every conv; the result is unpacked
        back to ``[B, N]`` at once (the dense's epilogue and the network output
        follow in the plain layout).  With matrix tiles (AMX) and a static batch
        above 1, the batch becomes the conv's width instead, ``x.T[1, K, 1, B]``,
        so that each tile row is one sample (a width-1 conv has 1-row tiles).
        """
        data, weight = call.args
        w, lookup = self.weight_of(weight)
        ty = data.ty
        if (w is None or w.dtype != np.int8 or w.ndim != 2 or not isinstance(ty, relax.TensorType) or ty.ndim != 2
                or ty.shape is None or not isinstance(ty.shape.values[1], tvm.tirx.IntImm) or _dtype(data) not in _INT8
                or str(call.attrs.out_dtype) != "int32"):
            return None
        w4 = np.ascontiguousarray(w.T).reshape(w.shape[1], w.shape[0], 1, 1)  # OIHW
        if not _accumulator_fits_int32(w4, self.spec):
            return None
        batch = ty.shape.values[0]
        as_rows = (self.spec.tile_intrinsic is not None and isinstance(batch, tvm.tirx.IntImm) and int(batch) > 1
                   and w.shape[0] >= TILE_K)
        if as_rows:
            xt = self.bb.emit(relax.op.permute_dims(self.plain_of(data), [1, 0]))
            x4 = self.bb.emit(relax.op.reshape(xt, (1, w.shape[0], 1, int(batch))))
        else:
            x4 = self.bb.emit(relax.op.expand_dims(self.plain_of(data), axis=[2, 3]))
        self.plain[x4] = x4
        conv = relax.op.nn.conv2d(x4, relax.const(w4, "int8"), out_dtype="int32")
        if lookup is not None:
            lookup = (lookup[0], np.ascontiguousarray(lookup[1].T).reshape(w4.shape))
        y = self.conv2d(conv, (w4, lookup))
        if y is None:
            return None
        plain = self.bb.emit_te(C.unpack_nchwc, y.expr, y.channels, primfunc_name_hint="gwq_unpack")
        if as_rows:
            plain = self.bb.emit(relax.op.reshape(plain, (y.channels, int(batch))))
            return self.bb.emit(relax.op.permute_dims(plain, [1, 0]))
        return self.bb.emit(relax.op.squeeze(plain, axis=[2, 3]))

    def unary(self, call) -> _Packed | None:
        src = call.args[0]
        if not isinstance(src, relax.Var) or src not in self.packed:
            return None
        p = self.packed[src]
        y = self.bb.emit(relax.Call(call.op, [p.expr, *call.args[1:]], call.attrs, call.ty_args))
        return _Packed(y, p.channels, p.block)

    def binary(self, call) -> _Packed | None:
        lhs, rhs = call.args
        first = next((a for a in (lhs, rhs) if isinstance(a, relax.Var) and a in self.packed), None)
        shapes = [_static_nchw(a) for a in (lhs, rhs) if isinstance(a, relax.Var)]
        chw = max((s for s in shapes if s is not None), key=lambda s: s[1] * s[2], default=None)  # the result's
        if first is None or chw is None:
            return None
        ref = self.packed[first]
        args = [self._binary_arg(a, chw, ref) for a in (lhs, rhs)]
        if any(x is None for x in args):
            return None
        return _Packed(self.bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args)), ref.channels, ref.block)

    def _binary_arg(self, arg, chw, ref: _Packed):
        """One operand of a packed elementwise op: a tensor of the result's shape, a per-channel tensor
        ``(N, C, 1, 1)`` (the squeeze-excitation gate, broadcast over the map in NCHW[cb]c just as in NCHW),
        or a scalar/per-channel constant."""
        value = _const(arg)
        if value is not None:
            packed = L.pack_channel_const(value, ref.channels, ref.block)
            return None if packed is None else relax.const(packed, str(value.dtype))
        if isinstance(arg, relax.Var) and _static_nchw(arg) in (chw, (chw[0], 1, 1)):
            return self.packed_of(arg, ref.block).expr
        return None

    def take(self, call) -> _Packed | None:
        """``take(table, x, mode="clip")`` of a constant 1-D table by a packed ``x`` (a lookup activation,
        :mod:`gwq_tvm.kinds.lut`) as the elementwise :func:`.compute.lookup`: it stays packed and fuses
        into the producing kernel's epilogue.  Padded channels look up whatever they hold (clipped into the
        table) and are never read back."""
        table, src = call.args
        t = _const(table)
        if (t is None or t.ndim != 1 or not isinstance(src, relax.Var) or src not in self.packed
                or (call.attrs.axis is not None and int(call.attrs.axis) != 0) or call.attrs.mode != "clip"):
            return None
        p = self.packed[src]
        y = self.bb.emit_te(C.lookup, table, p.expr, primfunc_name_hint=C.LOOKUP_BLOCK,
                            primfunc_attrs={C.ELEMENTWISE_ATTR: True})
        return _Packed(y, p.channels, p.block)

    def max_pool2d(self, call) -> _Packed | None:
        src = call.args[0]
        a = call.attrs
        if src not in self.packed or a.layout != "NCHW" or a.out_layout != "NCHW":
            return None
        p = self.packed[src]
        layout = f"NCHW{p.block}c"
        y = relax.op.nn.max_pool2d(p.expr, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode,
                                   a.count_include_pad, layout=layout, out_layout=layout)
        return _Packed(self.bb.emit(y), p.channels, p.block)

    def sum(self, call) -> _Packed | None:
        src = call.args[0]
        axes = sorted(int(x) % 4 for x in call.attrs.axis) if call.attrs.axis is not None else None
        if src not in self.packed or axes != [2, 3] or not call.attrs.keepdims:
            return None
        p = self.packed[src]
        return _Packed(self.bb.emit(relax.op.sum(p.expr, axis=[2, 3], keepdims=True)), p.channels, p.block)


def _weight_lookup(value) -> tuple | None:
    """``(table, codes)`` when ``value`` is a POST weight lookup ``take(table, codes)`` of an int8 table by
    constant uint8 codes (see :meth:`gwq_tvm.passes.realize.Emitter.layer_weight`), else ``None``."""
    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.take"):
        return None
    table, codes = (_const(a) for a in value.args)
    if table is None or codes is None or table.dtype != np.int8 or codes.dtype != np.uint8 or table.ndim != 1:
        return None
    return table, codes


def _lookup(table: np.ndarray, codes: np.ndarray) -> relax.Expr:
    return relax.op.take(relax.const(table, str(table.dtype)), relax.const(np.ascontiguousarray(codes), "uint8"),
                         axis=0, mode="clip")


_HANDLERS = {
    "relax.nn.conv2d": _Packer.conv2d,
    "relax.nn.conv2d_transpose": _Packer.conv2d_transpose,
    "relax.nn.conv1d": _Packer.conv1d,
    "relax.matmul": _Packer.matmul,
    "relax.nn.max_pool2d": _Packer.max_pool2d,
    "relax.sum": _Packer.sum,
    "relax.take": _Packer.take,
    **{name: _Packer.unary for name in _ELEMENTWISE_UNARY},
    **{name: _Packer.binary for name in _ELEMENTWISE_BINARY},
}


def _rewritable(func) -> bool:
    """Only straight-line dataflow functions are rewritten (others are left unchanged)."""
    return (isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr)
            and all(isinstance(b, relax.DataflowBlock) for b in func.body.blocks)
            and all(isinstance(b, relax.VarBinding) for blk in func.body.blocks for b in blk.bindings))


def _pack_function(func: relax.Function, spec: KernelSpec, int4: bool = True) -> tvm.IRModule:
    """A module holding the rewritten ``main`` and the packed kernels it calls."""
    bb = relax.BlockBuilder()
    attrs = dict(func.attrs.items()) if func.attrs is not None else None
    with bb.function("main", list(func.params), attrs=attrs):
        with bb.dataflow():
            packer = _Packer(bb, spec, int4)
            for p in func.params:
                packer.plain[p] = p
            for blk in func.body.blocks:
                for b in blk.bindings:
                    packer.rewrite(b.var, b.value)
            out = bb.emit_output(packer.plain_of(func.body.body))
        bb.emit_func_output(out)
    return bb.get()


@tvm.transform.module_pass(opt_level=0, name="PackInt8Layout")
class PackInt8Layout:
    """Rewrite the integer convs of ``main`` into packed kernels of one family (see the module docstring).

    The new ``main`` has the same signature and computes the same values.
    Functions other than ``main`` are kept, and the added kernels are
    ``call_tir`` PrimFuncs named ``gwq_conv2d*``, ``gwq_dwconv2d*``,
    ``gwq_pack*`` and ``gwq_unpack*``.

    Parameters
    ----------
    spec : KernelSpec
        The kernel family (:func:`gwq_tvm.schedules.spec.kernel_spec` of the
        target); default x86 VNNI.
    int4 : bool
        Store weights that fit 4-bit codes (uniform values in [-8, 7], POST
        codes of at most 16 levels) packed two per byte, for families with an
        int4 step (``spec.int4_intrinsic``); ``False`` keeps every weight int8.
    """

    def __init__(self, spec: KernelSpec = X86_VNNI, int4: bool = True):
        self.spec = spec
        self.int4 = int4

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"] if any(gv.name_hint == "main" for gv in mod.get_global_vars()) else None
        if not _rewritable(func):
            return mod
        new_mod = _pack_function(func, self.spec, self.int4)
        for gv, f in mod.functions_items():
            if gv.name_hint != "main":
                new_mod[gv] = f
        return new_mod
