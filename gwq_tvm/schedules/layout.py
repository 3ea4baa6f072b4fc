"""Pure numpy: the packed NCHW[x]c activation layout and the compile-time weight packing.

Layouts (``cb`` = channel block of the data, 16 output-channel lanes,
``k`` = reduction depth of one lane's dot product: 8 for aarch64 ``usmmla``,
4 for VNNI ``vpdpbusd`` and aarch64 ``sdot``, 2 for AVX2, 1 for plain NEON
multiply-accumulate)::

    activation   NCHW  -> (N, ceil(C/cb), H, W, cb)                  channel c at [c // cb, ..., c % cb]
    conv weight  OIHW  -> (ceil(O/16), Cp/cb, KH, KW, cb/k, 16, k)    "OIHW[cb/k]i16o[k]i"
                         (AMX: 64 output channels per row, cb = 64: "OIHW16i64o4i")
    depthwise    C1HW  -> (Cp/cb, KH, KW, cb)
    channel const (1, C, 1, 1) -> (1, Cp/cb, 1, 1, cb)
    float conv weight OIHW -> (ceil(O/L), C, KH, KW, L)             L float lanes (two vector registers)

Padded channels hold zeros (in weights, biases and shift amounts), so they
contribute nothing to real channels; their own values are never read back.
"""

from __future__ import annotations

import numpy as np

OC_BLOCK = 16
"""Output channels per VNNI ``vpdpbusd`` (16 int32 lanes)."""

K_BLOCK = 4
"""Reduction depth of one ``vpdpbusd`` / ``sdot`` lane (4 8-bit products)."""


def channel_block(channels: int, k_block: int = K_BLOCK) -> int:
    """Channel block for a tensor with ``channels`` channels: 16, or 4/8/12 for thin inputs.

    A thin tensor (the network input with 1 or 3 channels) is packed with the
    smallest multiple of ``max(4, k_block)`` (a conv's reduction steps must
    tile the block: 8 for i8mm) so the first conv does not multiply 16x padding.
    """
    step = max(K_BLOCK, k_block)
    return OC_BLOCK if channels > 12 else min(OC_BLOCK, step * -(-channels // step))


def padded(channels: int, block: int) -> int:
    """``channels`` rounded up to a multiple of ``block``."""
    return block * -(-channels // block)


def pack_conv_weight(weight: np.ndarray, in_block: int, k_block: int = K_BLOCK, out_block: int = OC_BLOCK) -> np.ndarray:
    """OIHW int8 weight -> ``(Op/ob, Cp/cb, KH, KW, cb/k, ob, k)``, zero-padded (``ob = out_block``).

    Parameters
    ----------
    weight : ndarray, shape (O, C, KH, KW), int8
    in_block : int
        Channel block ``cb`` of the conv's packed input (a multiple of ``k_block``).
    k_block : int
        Reduction depth innermost in the packed weight (4 for the dot-product
        instructions, 1 for lane-wise multiply-accumulate).
    out_block : int
        Output channels per packed row: 16 (one vector of int32 lanes), or 64
        for the AMX family, whose ``B`` tile rows hold 64 channels x 4
        (:mod:`gwq_tvm.schedules.amx`); the conv's output is then NCHW64c.
    """
    o, c, kh, kw = weight.shape
    op, cp = padded(o, out_block), padded(c, in_block)
    w = np.zeros((op, cp, kh, kw), weight.dtype)
    w[:o, :c] = weight
    w = w.reshape(op // out_block, out_block, cp // in_block, in_block // k_block, k_block, kh, kw)
    return np.ascontiguousarray(w.transpose(0, 2, 5, 6, 3, 1, 4))


def pack_float_conv_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """OIHW float weight -> ``(Op/L, C, KH, KW, L)``, output channels zero-padded to a multiple of ``lanes``."""
    o, c, kh, kw = weight.shape
    op = padded(o, lanes)
    w = np.zeros((op, c, kh, kw), weight.dtype)
    w[:o] = weight
    return np.ascontiguousarray(w.reshape(op // lanes, lanes, c, kh, kw).transpose(0, 2, 3, 4, 1))


def pack_depthwise_weight(weight: np.ndarray, block: int) -> np.ndarray:
    """(C, 1, KH, KW) depthwise weight -> ``(Cp/cb, KH, KW, cb)``, zero-padded."""
    c, _, kh, kw = weight.shape
    cp = padded(c, block)
    w = np.zeros((cp, kh, kw), weight.dtype)
    w[:c] = weight[:, 0]
    return np.ascontiguousarray(w.reshape(cp // block, block, kh, kw).transpose(0, 2, 3, 1))


def transposed_conv_as_conv(weight: np.ndarray, groups: int) -> np.ndarray:
    """The OIHW conv weight that computes a transposed conv over its zero-inserted input.

    ``conv2d_transpose(x, w)`` with an IOHW weight ``w`` of shape
    ``(C, O/g, KH, KW)``, stride ``s``, dilation ``d`` and padding ``p``
    equals ``conv2d(dilate(x, s), w', dilation=d, groups=g)`` padded by
    ``d * (K - 1) - p`` (plus the output padding at the far end), where
    ``dilate`` puts ``s - 1`` zeros between input pixels and::

        w'[gi * O/g + o, c, a, b] = w[gi * C/g + c, o, KH - 1 - a, KW - 1 - b]

    (output-channel first within each group, taps flipped).  Both sides sum
    the same integer products, so the rewrite is exact.

    Returns
    -------
    ndarray, shape (O, C/g, KH, KW), the dtype of ``weight``
    """
    ci, og, kh, kw = weight.shape
    cg = ci // groups
    w = weight.reshape(groups, cg, og, kh, kw).swapaxes(1, 2).reshape(groups * og, cg, kh, kw)
    return np.ascontiguousarray(w[:, :, ::-1, ::-1])


def merge_groups(weight: np.ndarray, groups: int, factor: int) -> np.ndarray:
    """The weight of a grouped conv with every ``factor`` neighbouring groups merged into one, zero across them.

    A ``(O, C/g, KH, KW)`` weight of ``g`` groups becomes ``(O, f*C/g, KH, KW)``
    of ``g/f`` groups: output ``o`` (of original group ``o // (O/g)``, at
    position ``i = o // (O/g) % f`` within its merged group) keeps its weights
    at inputs ``[i*C/g, (i+1)*C/g)`` of the merged group and is 0 at the
    others, so the conv computes the same integer sums with ``f`` times the
    multiplies.  POST codes merge the same way (code 0 is level 0).
    """
    o, cg = weight.shape[:2]
    og = o // groups
    out = np.zeros((o, cg * factor) + weight.shape[2:], weight.dtype)
    position = np.arange(o) // og % factor
    for i in range(factor):
        out[position == i, i * cg:(i + 1) * cg] = weight[position == i]
    return out


def pack_activation(x: np.ndarray, block: int) -> np.ndarray:
    """NCHW -> ``(N, Cp/cb, H, W, cb)`` with zero channel padding (tests and references)."""
    n, c, h, w = x.shape
    cp = padded(c, block)
    y = np.zeros((n, cp, h, w), x.dtype)
    y[:, :c] = x
    return np.ascontiguousarray(y.reshape(n, cp // block, block, h, w).transpose(0, 1, 3, 4, 2))


def pack_channel_const(value: np.ndarray, channels: int, block: int) -> np.ndarray | None:
    """A per-channel constant broadcast against NCHW -> its NCHW[cb]c form.

    Scalars are returned unchanged; ``(1, C, 1, 1)`` becomes
    ``(1, Cp/cb, 1, 1, cb)``.  Any other shape returns ``None`` (the caller
    keeps that op in NCHW).
    """
    value = np.asarray(value)
    if value.ndim == 0:
        return value
    if value.shape != (1, channels, 1, 1):
        return None
    cp = padded(channels, block)
    y = np.zeros((cp,), value.dtype)
    y[:channels] = value.reshape(-1)
    return np.ascontiguousarray(y.reshape(1, cp // block, 1, 1, block))


def offset_compensation(weight: np.ndarray, offset: int) -> np.ndarray:
    """``offset * sum(w)`` per output channel, int64, shape (O,).

    The exact identity behind feeding a dot-product instruction activations
    of the other signedness (``offset`` = +128: int8 read as uint8 for VNNI;
    -128: uint8 read as int8 for ``sdot``)::

        conv(x, w) = conv(x + offset, w) - offset * sum_{c,kh,kw} w[o, c, kh, kw]

    which holds at padded positions too when the offset input is padded with
    ``offset`` (the image of zero).
    """
    return offset * weight.astype(np.int64).reshape(weight.shape[0], -1).sum(axis=1)


def signed_input_compensation(weight: np.ndarray) -> np.ndarray:
    """``128 * sum(w)`` per output channel: :func:`offset_compensation` of the VNNI path (int8 read as uint8)."""
    return offset_compensation(weight, 128)


INT4_ROWS = OC_BLOCK // 2
"""Bytes per ``k``-row of one packed int4 step: byte ``[i, k]`` holds lane ``i`` (low nibble) and lane ``i + 8``
(high nibble), so the low nibbles of a step's 32 bytes are lanes 0-7 and the high nibbles lanes 8-15, each in the
``[16o][4i]`` order of the int8 step: unpacking is a mask, a shift and one concatenation of the two halves."""


def sign_extension_table() -> np.ndarray:
    """The 16-entry int8 table of a two's-complement nibble: ``table[u] = u - 16 * (u >= 8)`` (0..7, -8..-1)."""
    u = np.arange(16)
    return (u - 16 * (u >= 8)).astype(np.int8)


def int4_codes(weight: np.ndarray) -> np.ndarray:
    """The nibble codes ``u = w mod 16`` (uint8) of int4 weights ``-8 <= w <= 7`` (``sign_extension_table()[u] = w``)."""
    w = np.asarray(weight)
    if w.size and (w.min() < -8 or w.max() > 7):
        raise ValueError(f"int4 weights must lie in [-8, 7], got [{w.min()}, {w.max()}]")
    return (w.astype(np.int16) & 15).astype(np.uint8)


def pack_conv_weight_int4(codes: np.ndarray, in_block: int, k_block: int = K_BLOCK) -> np.ndarray:
    """OIHW nibble codes (uint8, ``< 16``) -> ``(Op/16, Cp/cb, KH, KW, cb/k, 8, k)`` uint8, two codes per byte.

    ``packed[..., i, r] = codes16[..., i, r] | codes16[..., i + 8, r] << 4`` where ``codes16`` is
    :func:`pack_conv_weight` of the codes (``[16o][k i]`` per step, zero-padded: code 0 is the level 0 of every
    table in use).  The weight takes half the bytes of the int8 one; the kernel turns a code ``u`` into
    ``table[u]`` in registers (:func:`gwq_tvm.schedules.compute.conv2d_nchwc_int8` with a ``table``).
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or (codes.size and codes.max() > 15):
        raise ValueError("int4 codes must be uint8 values below 16")
    w = pack_conv_weight(codes, in_block, k_block)
    return np.ascontiguousarray(w[..., :INT4_ROWS, :] | (w[..., INT4_ROWS:, :] << 4))


def unpack_conv_weight_int4(packed: np.ndarray) -> np.ndarray:
    """Inverse of the nibble packing of :func:`pack_conv_weight_int4`: ``(..., 8, k)`` uint8 -> ``(..., 16, k)`` codes."""
    return np.concatenate([packed & 15, packed >> 4], axis=-2)
