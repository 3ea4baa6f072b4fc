"""TE compute definitions of the packed integer kernels (what is computed, not how).

Every kernel names its blocks so :mod:`gwq_tvm.schedules.default` can find
them after ``FuseOps``/``FuseTIR`` merged the SFC epilogue into the kernel:

* ``gwq_conv2d_nchwc`` / ``gwq_conv_input``: the VNNI-shaped conv and its padded (and shifted) input;
* ``gwq_dwconv2d_nchwc`` / ``gwq_dw_input``: the depthwise conv and its padded input;
* ``gwq_pack`` / ``gwq_unpack``: the NCHW <-> NCHW[x]c edge transforms.
"""

from __future__ import annotations

import tvm
from tvm import te

CONV_BLOCK = "gwq_conv2d_nchwc"
CONV_INPUT_BLOCK = "gwq_conv_input"
DW_BLOCK = "gwq_dwconv2d_nchwc"
DW_INPUT_BLOCK = "gwq_dw_input"


def _out_size(size, lo, hi, kernel, stride, dilation):
    return (size + lo + hi - (kernel - 1) * dilation - 1) // stride + 1


def _padded_input(data, padding, pad_value: int, shift: bool, name: str):
    """Spatially padded copy of packed ``data``; with ``shift`` int8 ``x`` becomes uint8 ``x + 128``.

    Returns ``data`` itself when there is nothing to do.
    """
    pt, pl, pb, pr = (int(p) for p in padding)
    if not (pt or pl or pb or pr or shift):
        return data
    n, cc, h, w, cb = data.shape
    out_dtype = "uint8" if shift else data.dtype

    def value(b, c, y, x, ci):
        v = data[b, c, y - pt, x - pl, ci]
        if shift:
            v = (v.astype("int32") + 128).astype("uint8")
        inside = tvm.tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tvm.tirx.if_then_else(inside, v, tvm.tirx.const(pad_value, out_dtype))

    return te.compute((n, cc, h + pt + pb, w + pl + pr, cb), value, name=name)


def conv2d_nchwc_int8(data, weight, strides, padding, dilation, shift: bool):
    """uint8 x int8 -> int32 conv in NCHW[cb]c with an ``OIHW[cb/4]i16o4i`` weight.

    Parameters
    ----------
    data : te.Tensor, (N, C/cb, H, W, cb), uint8 (or int8 with ``shift``)
    weight : te.Tensor, (O/16, C/cb, KH, KW, cb/4, 16, 4), int8
    strides, dilation : (int, int)
    padding : (top, left, bottom, right)
    shift : bool
        ``data`` is int8: the kernel reads ``x + 128`` as uint8 and pads with
        128, so the result is ``conv(x, w) + 128 * sum(w)`` exactly (the
        caller subtracts the compensation).

    Returns
    -------
    te.Tensor, (N, O/16, OH, OW, 16), int32
    """
    n, _, h, w, _ = data.shape
    occ, icc, kh, kw, icb4, ocb, k4 = (int(v) for v in weight.shape)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    oh = _out_size(int(h), pt, pb, kh, sh, dh)
    ow = _out_size(int(w), pl, pr, kw, sw, dw)
    src = _padded_input(data, padding, 128 if shift else 0, shift, CONV_INPUT_BLOCK)
    rc = te.reduce_axis((0, icc), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rb = te.reduce_axis((0, icb4), "rb")
    r4 = te.reduce_axis((0, k4), "r4")

    def acc(b, o, y, x, oi):
        a = src[b, rc, y * sh + ry * dh, x * sw + rx * dw, rb * k4 + r4]
        return te.sum(a.astype("int32") * weight[o, rc, ry, rx, rb, oi, r4].astype("int32"), axis=[rc, ry, rx, rb, r4])

    return te.compute((n, occ, oh, ow, ocb), acc, name=CONV_BLOCK)


def depthwise_conv2d_nchwc(data, weight, strides, padding, dilation):
    """int8/uint8 x int8 -> int32 depthwise conv in NCHW[cb]c with a ``(C/cb, KH, KW, cb)`` weight."""
    n, cc, h, w, cb = data.shape
    _, kh, kw, _ = (int(v) for v in weight.shape)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in padding)
    oh = _out_size(int(h), pt, pb, kh, sh, dh)
    ow = _out_size(int(w), pl, pr, kw, sw, dw)
    src = _padded_input(data, padding, 0, False, DW_INPUT_BLOCK)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def acc(b, c, y, x, ci):
        a = src[b, c, y * sh + ry * dh, x * sw + rx * dw, ci]
        return te.sum(a.astype("int32") * weight[c, ry, rx, ci].astype("int32"), axis=[ry, rx])

    return te.compute((n, cc, oh, ow, cb), acc, name=DW_BLOCK)


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
