"""Packed int4 weights (issues 23/24): two nibble codes per byte, decoded in registers by a 16-entry table.

Uniform int4 weights (values in [-8, 7]) use the sign extension table, POST
weights ``take(table, codes)`` their level table; both feed the family's
dot-product instruction.  Bit-exact against the independent numpy
reference, on x86 (VNNI) and, slow, on the emulated aarch64 board.
"""

import re
import shutil
import uuid
import warnings

import numpy as np
import pytest
import tvm
from tvm import relax

from gwq_tvm.ir import const_value
from gwq_tvm.plan import post
from gwq_tvm.reference import run_reference
from gwq_tvm.remote.bench import upload
from gwq_tvm.runtime import host_target
from gwq_tvm.schedules import layout as L
from gwq_tvm.schedules.build import compile_integer
from gwq_tvm.schedules.pack_layout import PackInt8Layout
from gwq_tvm.schedules.targets import export_compiler, resolve_target
from gwq_tvm.schedules.vnni import has_vnni

VNNI = has_vnni(host_target())
needs_vnni = pytest.mark.skipif(not VNNI, reason="host CPU has no AVX-512 VNNI")


def _run(ex, x):
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _asm(ex) -> str:
    return "".join(m.inspect_source("asm") for m in ex.mod.imports if m.kind == "llvm")


def _compile_strict(mod, target=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compile_integer(mod, target or host_target())


def _weight(bb, rng, shape, form):
    """A conv/dense weight of ``shape``: ``"int4"`` a stored int8 constant in [-8, 7] (extremes included),
    ``"post"`` a POST lookup ``take(table, codes)`` at 4 bits, ``"int8"`` a full-range int8 constant."""
    if form == "int8":
        return relax.const(rng.integers(-128, 128, shape).astype("int8"))
    if form == "int4":
        w = rng.integers(-8, 8, shape).astype("int8")
        w.flat[:2] = (-8, 7)
        return relax.const(w)
    codes = post.codes(rng.integers(-7, 8, shape), 4)
    codes.flat[:2] = (0, 15)
    return bb.emit(relax.op.take(relax.const(post.code_table(4), "int8"), relax.const(codes, "uint8"), axis=0,
                                 mode="clip"))


def conv_module(c, o, hw, k, stride, padding, dtype, form, batch=1, seed=0):
    """x -> conv(W) -> >>6, clip, int8 -> conv 1x1 (W2) -> int32: two int4 convs in a row (the second reads int8)."""
    rng = np.random.default_rng(seed)
    x = relax.Var("x", relax.TensorType((batch, c, hw, hw), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            w1 = _weight(bb, rng, (o, c, k, k), form)
            w2 = _weight(bb, rng, (9, o, 1, 1), form)
            y = bb.emit(relax.op.nn.conv2d(x, w1, strides=stride, padding=padding, out_dtype="int32"))
            y = bb.emit(relax.op.right_shift(y, relax.const(np.int32(6))))
            y = bb.emit(relax.op.astype(relax.op.clip(y, relax.prim_value(-128), relax.prim_value(127)), "int8"))
            out = bb.emit_output(bb.emit(relax.op.nn.conv2d(y, w2, out_dtype="int32")))
        bb.emit_func_output(out)
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max + 1, (batch, c, hw, hw)).astype(dtype)
    data.flat[:2] = (info.min, info.max)
    return bb.get(), data


def dense_module(batch, k, n, dtype, form, seed=0):
    rng = np.random.default_rng(seed)
    x = relax.Var("x", relax.TensorType((batch, k), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            w = _weight(bb, rng, (k, n), form)
            out = bb.emit_output(bb.emit(relax.op.matmul(x, w, out_dtype="int32")))
        bb.emit_func_output(out)
    info = np.iinfo(dtype)
    return bb.get(), rng.integers(info.min, info.max + 1, (batch, k)).astype(dtype)


def _int4_kernels(mod, spec=None) -> int:
    packed = (PackInt8Layout() if spec is None else PackInt8Layout(spec))(mod)
    return sum(b.value.args[0].name_hint.startswith("gwq_conv2d_int4") for blk in packed["main"].body.blocks
               for b in blk.bindings if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir")


# --- packing (pure numpy) ----------------------------------------------------
@pytest.mark.parametrize("o,c,k,block", [(17, 5, 3, 8), (16, 16, 1, 16), (3, 33, 3, 16), (40, 4, 1, 4)])
def test_packing_round_trip(o, c, k, block):
    """Odd channel counts, signed extremes: codes -> packed bytes (half the size) -> codes -> weights."""
    rng = np.random.default_rng(o * c)
    w = rng.integers(-8, 8, (o, c, k, k)).astype(np.int8)
    w.flat[:2] = (-8, 7)
    codes = L.int4_codes(w)
    packed = L.pack_conv_weight_int4(codes, block)
    full = L.pack_conv_weight(w, block)
    assert packed.dtype == np.uint8 and packed.nbytes * 2 == full.nbytes
    np.testing.assert_array_equal(L.sign_extension_table()[L.unpack_conv_weight_int4(packed)], full)
    post_codes = (np.arange(o * c * k * k) % 16).astype(np.uint8).reshape(o, c, k, k)  # every code 0..15
    unpacked = L.unpack_conv_weight_int4(L.pack_conv_weight_int4(post_codes, block))
    np.testing.assert_array_equal(unpacked, L.pack_conv_weight(post_codes, block))


def test_packing_refuses_out_of_range():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        L.int4_codes(np.array([8], np.int8))
    with pytest.raises(ValueError, match="below 16"):
        L.pack_conv_weight_int4(np.full((1, 4, 1, 1), 16, np.uint8), 4)


def test_pass_packs_only_weights_that_fit_nibbles():
    """int4 and POST-4-bit weights become int4 kernels with half-size uint8 constants; int8 weights do not."""
    for form, expect in (("int4", 2), ("post", 2), ("int8", 0)):
        mod, _ = conv_module(16, 32, 6, 3, 1, 1, "uint8", form)
        assert _int4_kernels(mod) == expect, form
    mod, _ = conv_module(16, 32, 6, 3, 1, 1, "uint8", "int4")
    consts = [const_value(c) for c in _constants(PackInt8Layout()(mod)["main"])]
    assert any(c.dtype == np.uint8 and c.shape[-2:] == (8, 4) and c.size == 32 * 16 * 9 // 2 for c in consts)
    assert _int4_kernels(dense_module(1, 64, 10, "uint8", "int4")[0]) == 1
    assert PackInt8Layout(int4=False)(mod) is not None and _int4_kernels_off(mod) == 0


def _int4_kernels_off(mod) -> int:
    packed = PackInt8Layout(int4=False)(mod)
    return sum(b.value.args[0].name_hint.startswith("gwq_conv2d_int4") for blk in packed["main"].body.blocks
               for b in blk.bindings if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir")


def _constants(func):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if const_value(e) is not None else None)
    return found


# --- x86 VNNI: bit-exact, vpshufb + vpdpbusd ---------------------------------
SHAPES = [
    (16, 16, 8, 3, 1, 1, "uint8"),
    (3, 16, 9, 3, 1, 1, "int8"),
    (5, 17, 8, 3, 2, 1, "uint8"),
    (17, 5, 7, 1, 1, 0, "int8"),
    (32, 48, 7, 1, 1, 0, "uint8"),
    (1, 8, 11, 5, 2, (2, 1, 0, 2), "int8"),
]


@needs_vnni
@pytest.mark.parametrize("form", ["int4", "post"])
@pytest.mark.parametrize("c,o,hw,k,stride,padding,dtype", SHAPES)
def test_int4_conv_bit_exact(c, o, hw, k, stride, padding, dtype, form):
    mod, x = conv_module(c, o, hw, k, stride, padding, dtype, form)
    assert _int4_kernels(mod) == 2
    ex = _compile_strict(mod)
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


@needs_vnni
@pytest.mark.parametrize("form", ["int4", "post"])
@pytest.mark.parametrize("batch,k,n,dtype", [(1, 64, 10, "uint8"), (3, 17, 24, "int8"), (1, 512, 1000, "uint8")])
def test_int4_dense_bit_exact(batch, k, n, dtype, form):
    mod, x = dense_module(batch, k, n, dtype, form)
    assert _int4_kernels(mod) == 1
    np.testing.assert_array_equal(_run(_compile_strict(mod), x), run_reference(mod, x))


@needs_vnni
@pytest.mark.parametrize("mcpu, form, decode", [
    ("znver4", "int4", ["vgf2p8affineqb"]),               # GFNI: one affine op sign-extends both nibble halves
    ("znver4", "post", ["vgf2p8affineqb", "vpshufb"]),    # GFNI splits the codes, vpshufb looks them up
    ("cascadelake", "int4", ["vpshufb"]),                 # no GFNI: mask, shift, concatenate, vpshufb
    ("cascadelake", "post", ["vpshufb"]),
])
def test_int4_kernel_decodes_in_registers(mcpu, form, decode):
    """The int4 conv holds vpdpbusd fed by the in-register decode (and no vgf2p8affineqb without GFNI); exact."""
    mod, x = conv_module(16, 32, 8, 3, 1, 1, "uint8", form)
    ex = _compile_strict(mod, tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    asm = _asm(ex)
    assert "vpdpbusd" in asm and all(op in asm for op in decode)
    assert ("vgf2p8affineqb" in asm) == (mcpu == "znver4")
    np.testing.assert_array_equal(_run(ex, x), run_reference(mod, x))


# --- aarch64 sdot: tbl + sdot; bit-exact on the emulated board (slow) --------
needs_cross_gcc = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                     reason="apt-get install gcc-aarch64-linux-gnu")
DOTPROD = "aarch64-dotprod"


def test_int4_kernel_on_aarch64_holds_tbl_and_sdot():
    """Cross-compiled for a dotprod board the int4 conv and dense are tbl (the table lookup) feeding sdot."""
    for mod in (conv_module(16, 32, 8, 3, 1, 1, "uint8", "post")[0], dense_module(1, 64, 24, "uint8", "int4")[0]):
        asm = _asm(_compile_strict(mod, resolve_target(DOTPROD)))
        assert re.search(r"\ttbl\tv\d+\.16b", asm) and re.search(r"\tsdot\tv\d+\.4s", asm)


def _run_remote(remote, ex, x, path):
    path = path.with_name(f"{path.stem}_{uuid.uuid4().hex[:8]}.so")
    ex.export_library(str(path), fcompile=export_compiler(resolve_target(DOTPROD)))
    vm = relax.VirtualMachine(remote.load_module(upload(remote, path)), remote.cpu())
    vm.set_input("main", tvm.runtime.tensor(np.ascontiguousarray(x), device=remote.cpu()))
    vm.invoke_stateful("main")
    out = vm.get_outputs("main")
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


@pytest.mark.slow
@needs_cross_gcc
@pytest.mark.parametrize("form", ["int4", "post"])
def test_int4_bit_exact_on_board(aarch64_remote, tmp_path, form):
    """int4 / POST-4-bit convs (odd channels, strides, int8 and uint8 inputs) and a dense, on the emulated board."""
    cases = [conv_module(*shape, form) for shape in SHAPES[:4]] + [dense_module(1, 64, 10, "uint8", form),
                                                                   dense_module(3, 17, 24, "int8", form)]
    for i, (mod, x) in enumerate(cases):
        got = _run_remote(aarch64_remote, _compile_strict(mod, resolve_target(DOTPROD)), x, tmp_path / f"m{i}.so")
        np.testing.assert_array_equal(got, run_reference(mod, x))


# --- the plan's storage "int4" -------------------------------------------------
@needs_vnni
def test_plan_storage_int4_compiles_to_packed_int4_and_bit_exact(bundled_int8, fmnist):
    """A 4-bit layer with storage int4 in the QuantPlan realizes, packs two weights per byte and stays exact."""
    import dataclasses

    import gwq_tvm

    plan = bundled_int8.plan
    edited = plan.replace(layers={**plan.layers, **{n: dataclasses.replace(l, bits=4, storage="int4")
                                                    for n, l in plan.layers.items() if n != "conv2d_0"}})
    mod = gwq_tvm.RealizeIntegerProgram(edited)(bundled_int8.float_model.mod)
    assert _int4_kernels(mod) >= 2
    x = fmnist[1][:2]
    ex = _compile_strict(mod)
    np.testing.assert_array_equal(np.concatenate([_run(ex, v[None]) for v in x]),
                                  np.concatenate([run_reference(mod, v[None]) for v in x]))
