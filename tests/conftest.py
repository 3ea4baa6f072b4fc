import numpy as np
import pytest


@pytest.fixture(scope="session")
def fmnist():
    from gwq_tvm.data import fashion_mnist

    calib, _ = fashion_mnist("calib")
    test_x, test_y = fashion_mnist("test")
    return calib, test_x, test_y


@pytest.fixture(scope="session")
def bundled_int8(fmnist):
    import gwq_tvm

    calib, _, _ = fmnist
    return gwq_tvm.quantize(gwq_tvm.data.bundled_model(), calib[:256], gwq_tvm.QuantConfig())


def compile_and_run(mod, x):
    import tvm
    from tvm import relax

    from gwq_tvm.runtime import host_target

    vm = relax.VirtualMachine(tvm.compile(mod, host_target()), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()
