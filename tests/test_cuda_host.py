"""Host-side logic of the CUDA plug-in that needs no GPU: kernel lookup caching, registration."""

from __future__ import annotations

from minires import cuda, dispatch


class _FakeCupy:
    """Just enough of CuPy for kernel_function: a current device and RawModule.get_function, counted."""

    def __init__(self):
        self.device_id = 0
        self.lookups = []
        fake = self

        class Device:
            def __init__(self, index=None):
                self.id = fake.device_id

        class RawModule:
            def __init__(self, code, name_expressions):
                self.code = code

            def get_function(self, name):
                fake.lookups.append((fake.device_id, name))
                return (fake.device_id, name)

        self.cuda = type("cuda", (), {"Device": Device})
        self.RawModule = RawModule


def test_kernel_functions_are_looked_up_once_per_device_and_name():
    cp = _FakeCupy()
    names = ("k<float>", "k<double>")
    for _ in range(3):
        assert cuda.kernel_function(cp, "src", names, "k<float>") == (0, "k<float>")
    cuda.kernel_function(cp, "src", names, "k<double>")
    cp.device_id = 1
    assert cuda.kernel_function(cp, "src", names, "k<float>") == (1, "k<float>")
    assert cp.lookups == [(0, "k<float>"), (0, "k<double>"), (1, "k<float>")]


def test_the_cuda_kernels_are_registered_for_the_cuda_device_only():
    dispatch._load_plugins()
    for op in ("conv2d_forward", "conv2d_backward", "im2col", "col2im", "batch_norm_train_forward",
               "batch_norm_train_backward", "update_running_stats", "relu_forward", "relu_backward"):
        fn, _ = dispatch._fast[(op, "cuda")]
        assert fn.__module__.startswith("minires.cuda."), op
        cpu = dispatch._fast.get((op, "cpu"))
        assert cpu is None or cpu[0].__module__.startswith("minires.fast."), op
