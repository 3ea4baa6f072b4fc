"""TE compute definitions of the packed integer kernels (what is computed, not how).

Every kernel names its blocks so :mod:`gwq_tvm.schedules.default` can find
them after ``FuseOps``/``FuseTIR`` merged the SFC epilogue into the kernel:

* ``gwq_conv2d_nchwc`` / ``gwq_conv_input``: the packed conv (VNNI / sdot / NEON lanes) and its padded (and offset) input;
* ``gwq_dwconv2d_nchwc`` / ``gwq_dw_input``: the depthwise conv and its padded input;
* ``gwq_pack`` / ``gwq_unpack``: the NCHW <-> NCHW[x]c edge transforms;
* ``gwq_fconv2d`` / ``gwq_fconv_input``: the float conv of :mod:`gwq_tvm.schedules.float` and its padded input;
* ``gwq_lookup``: an elementwise table lookup (a lookup activation on a packed tensor);
* ``gwq_dilate``: the zero-inserted input of a transposed conv.
"""

from __future__ import annotations

import tvm
from tvm import te

CONV_BLOCK = "gwq_conv2d_nchwc"
CONV_INPUT_BLOCK = "gwq_conv_input"
DW_BLOCK = "gwq_dwconv2d_nchwc"
DW_INPUT_BLOCK = "gwq_dw_input"
FLOAT_CONV_BLOCK = "gwq_fconv2d"
FLOAT_CONV_INPUT_BLOCK = "gwq_fconv_input"
LOOKUP_BLOCK = "gwq_lookup"
DILATE_BLOCK = "gwq_dilate"
ELEMENTWISE_ATTR = "gwq.elementwise"
"""PrimFunc attribute of a kernel that is elementwise in its tensor operand although TVM's pattern analysis
cannot see it (a gather by data); :func:`gwq_tvm.schedules.build.fuse_passes` marks such kernels elementwise."""


def _out_size(size, lo, hi, kernel, stride, dilation):
    return (size + lo + hi - (kernel - 1) * dilation - 1) // stride + 1


def _padded_input(data, padding, offset: int, name: str, widen: str | None = None):
    """Spatially padded copy of packed ``data``, read as ``x + offset`` in the other 8-bit type, or widened.

    ``offset`` is 0 (values kept), +128 (int8 ``x`` -> uint8 ``x + 128``) or
    -128 (uint8 ``x`` -> int8 ``x - 128``); padding holds ``offset``, the
    image of zero.  ``widen`` (e.g. ``"int16"``, with ``offset`` 0) stores
    the values exactly in that wider type.  Returns ``data`` itself when
    there is nothing to do.
    """
    pt, pl, pb, pr = (int(p) for p in padding)
    if not (pt or pl or pb or pr or offset or widen):
        return data
    n, cc, h, w, cb = data.shape
    out_dtype = widen or {0: data.dtype, 128: "uint8", -128: "int8"}[offset]

    def value(b, c, y, x, ci):
        v = data[b, c, y - pt, x - pl, ci]
        if offset:
            v = (v.astype("int32") + offset).astype(out_dtype)
        elif widen:
            v = v.astype(out_dtype)
        inside = tvm.tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tvm.tirx.if_then_else(inside, v, tvm.tirx.const(offset, out_dtype))

    return te.compute((n, cc, h + pt + pb, w + pl + pr, cb), value, name=name)


INT4_TABLE_ATTR = "gwq.int4_table"
"""Annotation of a packed int4 conv block: its 16-entry code table, ``"t0,t1,...,t15"`` (the schedule picks the
tensor intrinsic registered for that table, :func:`gwq_tvm.schedules.intrin.dot_16x4_int4_desc`)."""


def int4_weight(byte, lane, table):
    """The int8 weight of output lane ``lane`` (0..15) held in packed ``byte``: ``table[(byte >> 4 * (lane // 8)) & 15]``.

    ``byte`` is the packed weight at row ``lane % 8`` (layout
    :func:`gwq_tvm.schedules.layout.pack_conv_weight_int4`); ``table`` is a
    tuple of 16 int8 values, compile-time constants of the kernel, so the
    lookup is written as a chain of selects on the code (a TIR load from a
    table buffer by a loaded index could not be matched by ``tensorize``: two
    data-dependent indices are never provably equal).  The one TIR
    description of the nibble decode: the conv compute below and the int4
    tensor intrinsics' description both build it here, so they match structurally.
    """
    shift = (lane // 8 * 4).astype("uint8")
    code = tvm.tirx.bitwise_and(tvm.tirx.shift_right(byte, shift), tvm.tirx.const(15, "uint8"))
    value = tvm.tirx.const(int(table[15]), "int8")
    for u in range(14, -1, -1):
        value = tvm.tirx.Select(code == tvm.tirx.const(u, "uint8"), tvm.tirx.const(int(table[u]), "int8"), value)
    return value


def conv2d_nchwc_int8(data, weight, strides, padding, dilation, offset: int = 0, widen: str | None = None,
                      table=None, groups: int = 1):
    """8-bit x int8 -> int32 conv in NCHW[cb]c with an ``OIHW[cb/k]i16o[k]i`` weight (or its packed int4 form).

    Parameters
    ----------
    data : te.Tensor, (N, C/cb, H, W, cb), uint8 or int8
    weight : te.Tensor, (O/16, C/cb, KH, KW, cb/k, 16, k), int8 (or ``widen``)
        ``k`` = 4 for the dot-product instructions, 2 for AVX2's int16
        pairs, 1 for lane-wise MACs.
    strides, dilation : (int, int)
    padding : (top, left, bottom, right)
    offset : int
        0, or +128 / -128 to read int8 / uint8 ``data`` as ``x + offset`` in
        the other 8-bit type (padded with ``offset``), so the result is
        ``conv(x, w) + offset * sum(w)`` exactly (the caller subtracts
        :func:`gwq_tvm.schedules.layout.offset_compensation`).
    widen : str, optional
        Store the padded input in this wider type (``"int16"``: the AVX2
        family multiplies int16 operands); the input stage is then always
        materialized.
    table : sequence of 16 ints, optional
        ``weight`` is packed int4, ``(O/16, C/cb, KH, KW, cb/4, 8, 4)`` uint8
        (two codes per byte), and the weight of lane ``oi`` is
        ``table[code]`` (:func:`int4_weight`): the sign extension table for
        uniform int4 weights, the POST level table for POST codes.  The
        block carries the table as annotation :data:`INT4_TABLE_ATTR`.
    groups : int
        A grouped conv: ``weight`` holds each output channel's ``C/groups``
        inputs (``C/groups/cb`` blocks) and every group has whole output
        blocks, so output block ``o`` reads the input blocks
        ``g * (C/groups/cb) + rc`` of its group ``g = o // (O/16/groups)``:
        all 16 lanes of a block read the same inputs, as in a plain conv.

    Returns
    -------
    te.Tensor, (N, O/16, OH, OW, 16), int32
    """
    n, _, h, w, _ = data.shape
    occ, icc, kh, kw, icb4, ocb, k4 = (int(v) for v in weight.shape)
    if table is not None:
        ocb *= 2
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    oh = _out_size(int(h), pt, pb, kh, sh, dh)
    ow = _out_size(int(w), pl, pr, kw, sw, dw)
    src = _padded_input(data, padding, offset, CONV_INPUT_BLOCK, widen)
    rc = te.reduce_axis((0, icc), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rb = te.reduce_axis((0, icb4), "rb")
    r4 = te.reduce_axis((0, k4), "r4")

    blocks_per_group = occ // groups

    def acc(b, o, y, x, oi):
        c = rc if groups == 1 else o // blocks_per_group * icc + rc
        a = src[b, c, y * sh + ry * dh, x * sw + rx * dw, rb * k4 + r4]
        wv = (weight[o, rc, ry, rx, rb, oi, r4] if table is None
              else int4_weight(weight[o, rc, ry, rx, rb, oi % 8, r4], oi, table))
        return te.sum(a.astype("int32") * wv.astype("int32"), axis=[rc, ry, rx, rb, r4])

    attrs = None if table is None else {INT4_TABLE_ATTR: ",".join(str(int(t)) for t in table)}
    return te.compute((n, occ, oh, ow, ocb), acc, name=CONV_BLOCK, attrs=attrs)


def conv2d_float_packed_weight(data, weight, strides, padding, dilation):
    """Float conv of NCHW ``data`` with a lane-packed weight, into NCHW[L]c accumulators.

    ``out[n, o, y, x, l] = sum_{c, ky, kx} pad(data)[n, c, y*sh + ky*dh, x*sw + kx*dw] * weight[o, c, ky, kx, l]``,
    summed in the order ``c``, ``ky``, ``kx`` (as TOPI's ``conv2d_nchw``), so
    each output sees the same sequence of float operations as the plain conv.

    Parameters
    ----------
    data : te.Tensor, (N, C, H, W), float32 or float64
    weight : te.Tensor, (O/L, C, KH, KW, L), same dtype (:func:`.layout.pack_float_conv_weight`)
    strides, dilation : (int, int)
    padding : (top, left, bottom, right)

    Returns
    -------
    te.Tensor, (N, O/L, OH, OW, L), the dtype of ``data``
        Unpack with :func:`unpack_nchwc`.
    """
    n, _, h, w = data.shape
    occ, c, kh, kw, lanes = (int(v) for v in weight.shape)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    oh = _out_size(int(h), pt, pb, kh, sh, dh)
    ow = _out_size(int(w), pl, pr, kw, sw, dw)
    src = data
    if pt or pl or pb or pr:
        def value(b, ci, y, x):
            inside = tvm.tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
            return tvm.tirx.if_then_else(inside, data[b, ci, y - pt, x - pl], tvm.tirx.const(0, data.dtype))

        src = te.compute((n, c, h + pt + pb, w + pl + pr), value, name=FLOAT_CONV_INPUT_BLOCK)
    rc = te.reduce_axis((0, c), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def acc(b, o, y, x, li):
        return te.sum(src[b, rc, y * sh + ry * dh, x * sw + rx * dw] * weight[o, rc, ry, rx, li], axis=[rc, ry, rx])

    return te.compute((n, occ, oh, ow, lanes), acc, name=FLOAT_CONV_BLOCK)


def depthwise_conv2d_nchwc(data, weight, strides, padding, dilation):
    """int8/uint8 x int8 -> int32 depthwise conv in NCHW[cb]c with a ``(C/cb, KH, KW, cb)`` weight."""
    n, cc, h, w, cb = data.shape
    _, kh, kw, _ = (int(v) for v in weight.shape)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    oh = _out_size(int(h), pt, pb, kh, sh, dh)
    ow = _out_size(int(w), pl, pr, kw, sw, dw)
    src = _padded_input(data, padding, 0, DW_INPUT_BLOCK)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def acc(b, c, y, x, ci):
        a = src[b, c, y * sh + ry * dh, x * sw + rx * dw, ci]
        return te.sum(a.astype("int32") * weight[c, ry, rx, ci].astype("int32"), axis=[ry, rx])

    return te.compute((n, cc, oh, ow, cb), acc, name=DW_BLOCK)


def dilate_nchwc(data, stride_h: int, stride_w: int):
    """Zero insertion: ``stride - 1`` zeros between neighbouring pixels of packed ``data``.

    ``out[n, c, y, x, i] = data[n, c, y / sh, x / sw, i]`` where ``sh | y`` and
    ``sw | x``, else 0; shape ``(N, C/cb, (H - 1) * sh + 1, (W - 1) * sw + 1, cb)``.
    The input of a transposed conv computed as a conv
    (:func:`gwq_tvm.schedules.layout.transposed_conv_as_conv`).  The zeros are
    stored zeros, so a kernel reading ``x + offset`` reads ``offset`` there, as
    at its padding: the offset compensation stays exact.
    """
    n, cc, h, w, cb = data.shape
    sh, sw = int(stride_h), int(stride_w)

    def value(b, c, y, x, i):
        on = tvm.tirx.all(y % sh == 0, x % sw == 0)
        return tvm.tirx.if_then_else(on, data[b, c, y // sh, x // sw, i], tvm.tirx.const(0, data.dtype))

    return te.compute((n, cc, (h - 1) * sh + 1, (w - 1) * sw + 1, cb), value, name=DILATE_BLOCK)


def pack_nchwc(data, block: int):
    """NCHW -> NCHW[block]c, zero-filling the padded channels."""
    n, c, h, w = data.shape
    cc = -(-int(c) // block)

    def value(b, co, y, x, ci):
        ch = co * block + ci
        return tvm.tirx.if_then_else(ch < c, data[b, tvm.te.min(ch, c - 1), y, x], tvm.tirx.const(0, data.dtype))

    return te.compute((n, cc, h, w, block), value, name="gwq_pack")


def unpack_nchwc(data, channels: int):
    """NCHW[cb]c -> NCHW, dropping the padded channels."""
    n, _, h, w, cb = data.shape
    block = int(cb)
    return te.compute((n, channels, h, w), lambda b, c, y, x: data[b, c // block, y, x, c % block], name="gwq_unpack")


def lookup(table, index):
    """``out[i] = table[clip(index[i], 0, n - 1)]`` for every element ``i`` of ``index`` (``table`` of length ``n``).

    The same values as ``relax.op.take(table, index, axis=0, mode="clip")`` of a 1-D table, as a TE
    compute the packed program can fuse into the kernel that produces ``index``.
    """
    n = int(table.shape[0])
    return te.compute(index.shape, lambda *i: table[tvm.te.max(tvm.te.min(index(*i), n - 1), 0)], name=LOOKUP_BLOCK)
