"""The check cells of the tutorial exercises reject wrong answers, loudly and helpfully.

``tests/test_notebooks.py`` shows that every check cell fails against its stub (a
missing answer) and passes with the solution. Here each check cell is fed plausible
WRONG answers, the mistakes a learner makes, and must fail with an AssertionError
(not a NameError or a crash of its own), with a message that says something useful.

Each case runs in one fresh kernel per notebook, with only the notebook's first code
cell (its imports), the wrong answer in place of the stub, and the check cell: a check
cell must depend on nothing else, so that a learner can re-run it after any edit.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
_spec = importlib.util.spec_from_file_location("tutorials_execute", TUTORIALS / "execute.py")
EXECUTE = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(EXECUTE)

# notebook -> [(the stub name it replaces, a wrong answer, words the check's message must contain)]
WRONG_ANSWERS = {
    "01_autograd": [
        ("neuron_gradients", '''
def neuron_gradients(x, w, b, t):
    a = np.tanh(w * x + b)
    dL_dz = 2 * (a - t) * (1 - a)  # wrong derivative of tanh
    return dL_dz * w, dL_dz * x, dL_dz
''', "dL/dx from neuron_gradients is wrong"),
        ("neuron_gradients", '''
def neuron_gradients(x, w, b, t):
    a = np.tanh(w * x + b)
    dL_dz = 2 * (a - t) * (1 - a**2)
    return dL_dz * x, dL_dz * w, dL_dz  # dL/dx and dL/dw swapped
''', "is wrong"),
        ("Softplus", '''
class Softplus(minires.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.logaddexp(0, x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 0.5 * (1 + np.tanh(x / 2))  # forgets the upstream gradient
''', "Softplus.backward is wrong"),
        ("Softplus", '''
class Softplus(minires.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.log(1 + np.exp(x))  # overflows for large x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (1 + np.exp(-x))
''', "overflows"),
    ],
    "02_convolution_im2col": [
        ("my_im2col", '''
def my_im2col(x, k, stride=1, padding=0):
    n, c, h, w = x.shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((n, c, k, k, h_out, w_out), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, j, i] = xpad[:, :, i:i + stride * h_out:stride, j:j + stride * w_out:stride]  # i, j swapped
    return cols.reshape(n, c * k * k, h_out * w_out)
''', "my_im2col is wrong"),
        ("my_im2col", '''
def my_im2col(x, k, stride=1, padding=0):
    n, c, h, w = x.shape
    h_out, w_out = h - k + 1, w - k + 1  # ignores stride and padding
    cols = np.empty((n, c, k, k, h_out, w_out), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = x[:, :, i:i + h_out, j:j + w_out]
    return cols.reshape(n, c * k * k, h_out * w_out)
''', "shape"),
        ("my_col2im", '''
def my_col2im(cols, x_shape, k, stride=1, padding=0):
    n, c, h, w = x_shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    taps = cols.reshape(n, c, k, k, h_out, w_out)
    xpad = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            xpad[:, :, i:i + stride * h_out:stride, j:j + stride * w_out:stride] = taps[:, :, i, j]  # overwrites
    return xpad[:, :, padding:padding + h, padding:padding + w]
''', "not the adjoint"),
    ],
    "03_batch_norm": [
        ("bn_backward", '''
def bn_backward(g, xhat, s, gamma):
    axes = (0, 2, 3)
    m = g.size // g.shape[1]
    dbeta, dgamma = g.sum(axis=axes), (g * xhat).sum(axis=axes)
    dx = gamma.reshape(1, -1, 1, 1) * s / m * (m * g - dbeta.reshape(1, -1, 1, 1))  # forgets a term
    return dx, dgamma, dbeta
''', "dx from bn_backward is wrong"),
        ("bn_backward", '''
def bn_backward(g, xhat, s, gamma):
    dbeta, dgamma = g.sum(axis=0), (g * xhat).sum(axis=0)  # sums over the batch axis only
    return gamma.reshape(1, -1, 1, 1) * s * g, dgamma, dbeta
''', "shape"),
    ],
    "04_residual_blocks": [
        ("MyBasicBlock", '''
class MyBasicBlock(BasicBlock):
    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))  # no shortcut
''', "shortcut is missing"),
        ("MyBasicBlock", '''
class MyBasicBlock(BasicBlock):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out))) + self.downsample(x)  # ReLU before the addition
''', "after the addition"),
        ("MyBasicBlock", '''
class MyBasicBlock(BasicBlock):
    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)  # x instead of the shortcut s(x)
''', "raised"),
    ],
    "07_data_parallel": [
        ("sync_bn_backward", '''
def sync_bn_backward(g_shards, xhat_shards, gamma, s, all_reduce):
    axes = (0, 2, 3)
    dx = []
    for g, xhat in zip(g_shards, xhat_shards):  # every rank alone: plain batch norm with local sums and count
        m = g.size // g.shape[1]
        dbeta, dgamma = g.sum(axis=axes, keepdims=True), (g * xhat).sum(axis=axes, keepdims=True)
        dx.append(gamma.reshape(1, -1, 1, 1) * s / m * (m * g - dbeta - xhat * dgamma))
    all_reduce([np.zeros(1) for _ in g_shards])
    return dx
''', "dx of rank 0 from sync_bn_backward is wrong"),
        ("sync_bn_backward", '''
def sync_bn_backward(g_shards, xhat_shards, gamma, s, all_reduce):
    axes, c = (0, 2, 3), gamma.shape[0]
    totals = all_reduce([np.concatenate([g.sum(axis=axes), (g * xhat).sum(axis=axes)])
                         for g, xhat in zip(g_shards, xhat_shards)])
    dx = []
    for g, xhat, t in zip(g_shards, xhat_shards, totals):
        m = g.size // c  # the rank's own count instead of the global M
        dx.append(gamma.reshape(1, -1, 1, 1) * s / m
                  * (m * g - t[:c].reshape(1, -1, 1, 1) - xhat * t[c:].reshape(1, -1, 1, 1)))
    return dx
''', "count M"),
        ("sync_bn_backward", '''
def sync_bn_backward(g_shards, xhat_shards, gamma, s, all_reduce):
    g, xhat = np.concatenate(g_shards), np.concatenate(xhat_shards)  # reads every rank's data: not allowed
    m = g.size // g.shape[1]
    dbeta, dgamma = g.sum(axis=(0, 2, 3), keepdims=True), (g * xhat).sum(axis=(0, 2, 3), keepdims=True)
    dx = gamma.reshape(1, -1, 1, 1) * s / m * (m * g - dbeta - xhat * dgamma)
    return np.split(dx, np.cumsum([len(a) for a in g_shards])[:-1])
''', "never called all_reduce"),
        ("sync_bn_backward", '''
def sync_bn_backward(g_shards, xhat_shards, gamma, s, all_reduce):
    g, xhat = np.concatenate(g_shards), np.concatenate(xhat_shards)
    m = g.size // g.shape[1]
    dbeta, dgamma = g.sum(axis=(0, 2, 3), keepdims=True), (g * xhat).sum(axis=(0, 2, 3), keepdims=True)
    all_reduce([np.zeros(1) for _ in g_shards])
    return gamma.reshape(1, -1, 1, 1) * s / m * (m * g - dbeta - xhat * dgamma)  # one array, not one per rank
''', "one dx per rank"),
    ],
}


def test_every_stubbed_notebook_has_wrong_answers_here():
    stubbed = {name for name in EXECUTE.notebook_names()
               if any("stub" in c.metadata.get("tags", []) for c in EXECUTE.read_notebook(name).cells)}
    assert stubbed == set(WRONG_ANSWERS)


@pytest.mark.parametrize("name", sorted(WRONG_ANSWERS))
def test_check_cells_reject_wrong_answers(name, monkeypatch):
    nb = EXECUTE.read_notebook(name)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    checks = {}  # stub name -> the check cell after it
    for i, cell in enumerate(nb.cells):
        if "stub" in cell.metadata.get("tags", []):
            for stub in EXECUTE.stub_names(cell):
                checks[stub] = nb.cells[i + 1]
    cells = [nbformat.v4.new_code_cell(setup.source)]
    for stub, wrong, _ in WRONG_ANSWERS[name]:
        cells.append(nbformat.v4.new_code_cell(wrong.strip()))
        cells.append(nbformat.v4.new_code_cell(checks[stub].source, metadata={"tags": ["raises-exception"]}))
    run = nbformat.v4.new_notebook(cells=cells)
    monkeypatch.setenv("MINIRES_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(run, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    for k, (stub, wrong, words) in enumerate(WRONG_ANSWERS[name]):
        answer, check = run.cells[1 + 2 * k], run.cells[2 + 2 * k]
        assert not [o for o in answer.outputs if o.output_type == "error"], f"wrong answer {k} itself failed"
        errors = [o for o in check.outputs if o.output_type == "error"]
        assert errors, f"the check of {stub} in {name} PASSED wrong answer {k}:\n{wrong}"
        assert errors[0].ename == "AssertionError", (
            f"the check of {stub} in {name} crashed on wrong answer {k} instead of failing: "
            f"{errors[0].ename}: {errors[0].evalue}")
        assert words in errors[0].evalue, (
            f"the check of {stub} in {name} gives an unhelpful message for wrong answer {k}: {errors[0].evalue}")
