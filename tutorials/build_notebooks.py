"""Build the tutorial notebooks from the cells written below, and run them to embed real outputs.

The notebooks are generated, not edited by hand: every cell of every notebook is
written here as Python data, so a change to a tutorial is an ordinary code diff,
and the committed ``.ipynb`` files (with their outputs, so that the figures show
on a code-hosting site) are always produced by one clean top-to-bottom run of
the current code.

Usage (from the repository root, in the dev environment)::

    python tutorials/build_notebooks.py                 # all notebooks, full mode, outputs embedded
    python tutorials/build_notebooks.py 03 05           # only those (matched by number or name)
    python tutorials/build_notebooks.py --quick         # MINIRES_QUICK=1: small sizes, seconds each
    python tutorials/build_notebooks.py --no-execute    # sources only, no outputs (fast, for editing)

Execution uses the Jupyter kernel ``python3`` (from ipykernel, in the ``test``
extra) with the notebook's own directory as the working directory. Files are
written atomically. ``tests/test_notebooks.py`` checks that the committed
notebooks have the cells this script generates and runs each in quick mode.

Cell conventions (checked by the tests):

* the first cell is the title and a "By the end of this notebook you will
  understand" list;
* the first code cell reads ``MINIRES_QUICK`` and prints ``quick mode: True/False``;
* every exercise has its solution in the following code cell, whose source
  starts with ``# Solution``, tagged ``solution`` and hidden by default
  (``{"jupyter": {"source_hidden": true}}``);
* only minires, NumPy, matplotlib, IPython and the standard library are
  imported; torch only inside ``try: ... except ImportError``.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Every code cell that starts a notebook: the quick-mode switch, read once.
QUICK_SNIPPET = '''\
# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")'''

SOLUTION_NOTE = "**Solution** (the next cell is hidden: click it to expand it)."


# ---------------------------------------------------------------------------
# Cell constructors: each returns (kind, source)
# ---------------------------------------------------------------------------


def md(text: str) -> tuple[str, str]:
    """A markdown cell (the text is dedented and stripped)."""
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    """A code cell."""
    return ("code", textwrap.dedent(text).strip("\n"))


def solution(text: str) -> list[tuple[str, str]]:
    """A short markdown pointer and the hidden, tagged solution cell."""
    body = textwrap.dedent(text).strip("\n")
    if not body.startswith("# Solution"):
        raise ValueError(f"a solution cell must start with '# Solution', got {body[:40]!r}")
    return [md(SOLUTION_NOTE), ("solution", body)]


def setup(imports: str) -> tuple[str, str]:
    """The first code cell: the notebook's imports followed by the quick-mode switch."""
    return code(textwrap.dedent(imports).strip("\n") + "\n\n" + QUICK_SNIPPET)


# ---------------------------------------------------------------------------
# Building and running
# ---------------------------------------------------------------------------


def build(name: str):
    """The notebook ``name`` (e.g. ``"01_autograd.ipynb"``) as an nbformat node, without outputs."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    if name not in NOTEBOOKS:
        raise KeyError(f"unknown notebook {name!r}; known: {', '.join(NOTEBOOKS)}")
    cells = []
    stem = name.split("_")[0]
    for index, item in enumerate(_flatten(NOTEBOOKS[name]())):
        kind, source = item
        # Stable cell ids (nbformat >= 4.5 requires ids): rebuilding gives the same file, so diffs stay small.
        cell_id = f"nb{stem}-{index:03d}"
        if kind == "markdown":
            cell = new_markdown_cell(source, id=cell_id)
        elif kind == "code":
            cell = new_code_cell(source, id=cell_id)
        elif kind == "solution":
            cell = new_code_cell(source, id=cell_id)
            cell.metadata["jupyter"] = {"source_hidden": True}
            cell.metadata["tags"] = ["solution"]
        else:
            raise ValueError(f"unknown cell kind {kind!r} in {name}")
        cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def _flatten(items):
    for item in items:
        if isinstance(item, list):
            yield from item
        else:
            yield item


def execute(nb, quick: bool, cell_timeout: int = 1200):
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel started in this directory; returns it."""
    from nbclient import NotebookClient

    saved = {key: os.environ.get(key) for key in ("MINIRES_QUICK", "MPLBACKEND")}
    os.environ["MINIRES_QUICK"] = "1" if quick else "0"
    # The kernel must use matplotlib's inline backend so that figures are embedded as PNGs;
    # a global MPLBACKEND (e.g. Agg from CI settings) would suppress them.
    os.environ.pop("MPLBACKEND", None)
    try:
        client = NotebookClient(
            nb, timeout=cell_timeout, kernel_name="python3", record_timing=False,
            resources={"metadata": {"path": str(HERE)}},
        )
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return nb


def write_atomic(nb, path: Path) -> None:
    """Write ``nb`` to ``path`` atomically (see minires.atomic)."""
    import nbformat

    from minires.atomic import atomic_write_text

    atomic_write_text(path, nbformat.writes(nb))


def _select(patterns: list[str]) -> list[str]:
    if not patterns:
        return list(NOTEBOOKS)
    chosen = []
    for pattern in patterns:
        matches = [name for name in NOTEBOOKS if name.startswith(pattern) or pattern in name]
        if not matches:
            raise SystemExit(f"no notebook matches {pattern!r}; notebooks: {', '.join(NOTEBOOKS)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names to build (default: all)")
    parser.add_argument("--quick", action="store_true", help="run with MINIRES_QUICK=1")
    parser.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell (default 1200)")
    args = parser.parse_args(argv)
    for name in _select(args.notebooks):
        nb = build(name)
        start = time.perf_counter()
        if not args.no_execute:
            execute(nb, quick=args.quick, cell_timeout=args.timeout)
        write_atomic(nb, HERE / name)
        mode = "not executed" if args.no_execute else ("quick mode" if args.quick else "full mode")
        print(f"{name}: {mode}, {time.perf_counter() - start:.1f} s", flush=True)
    return 0


# ===========================================================================
# The notebooks (one function each, returning the list of cells)
# ===========================================================================

def notebook_01():
    return [
        md(r'''
        # 1. Autograd from scratch

        Every network in minires learns by gradient descent, and every gradient it uses comes from one
        small piece of machinery: reverse-mode automatic differentiation, "autograd". This notebook
        takes that machinery apart on a problem small enough to do by hand.

        **By the end of this notebook you will understand**

        * what a computational graph is, and how a forward pass builds one as a side effect;
        * how the chain rule, applied from the loss backwards through the graph, produces the gradient
          with respect to *every* input in a single sweep;
        * how minires records the graph (`Tensor._ctx`, the `Function` classes and their `Context`) and
          how `backward()` replays it, well enough to rewrite `backward()` yourself in about 30 lines;
        * how to add a new differentiable operation by writing a `Function`;
        * how to check a gradient three ways (by hand, with `backward()`, with `minires.gradcheck`),
          and why the check runs in float64 with a *random* upstream gradient.

        You need NumPy and first-year calculus (the derivative of a product and of `tanh`).
        '''),
        setup('''
        import inspect
        import os

        import matplotlib.pyplot as plt
        import numpy as np

        import minires
        from minires import Tensor
        '''),
        md(r'''
        ## 1. A computational graph

        Take one neuron with a squared-error loss. With input $x$, weight $w$, bias $b$ and target $t$:

        $$z = w\,x + b, \qquad a = \tanh(z), \qquad L = (a - t)^2 .$$

        Each step is one elementary operation. Draw every operation as a node and every value it
        consumes as an edge and you get a directed acyclic graph: the inputs (the *leaves*) at one end,
        the loss at the other. minires builds this graph while it computes the forward pass; nothing has
        to be declared in advance. We use float64 here so that the numbers we compute by hand and the
        ones minires computes agree to the last digit.
        '''),
        code(r'''
        def leaf(value, name):
            """A scalar input we want the gradient of (float64, named for the drawings)."""
            t = Tensor(np.float64(value), requires_grad=True)
            t.name = name
            return t


        x, w, b = leaf(0.5, "x"), leaf(-1.5, "w"), leaf(0.25, "b")
        target = 0.8  # a constant: no gradient needed

        z = w * x + b
        a = z.tanh()
        L = (a - target) ** 2
        print("L =", L)
        '''),
        md(r'''
        `L` knows how it was made: `L._ctx` is the record of the operation that produced it, and that
        record points at the operation's inputs, which point at *their* inputs, down to the leaves. The
        function below walks those links and draws what it finds.
        '''),
        code(r'''
        def graph_nodes(root):
            """Every tensor reachable from root through the _ctx.inputs links, with its distance from root."""
            level, order = {id(root): 0}, [root]
            for node in order:  # breadth-first: `order` grows while we walk it
                inputs = node._ctx.inputs if node._ctx is not None else ()
                for parent in inputs:
                    if id(parent) not in level:
                        level[id(parent)] = level[id(node)] + 1
                        order.append(parent)
            return order, level


        def node_label(node):
            value = float(node.data)
            if node._ctx is not None:
                return f"{node._ctx.fn.__name__}\n{value:.4f}", "#fdd9a0"   # an operation and its output
            if node.requires_grad:
                return f"{node.name} = {value:g}", "#a8d1f0"                 # a leaf we differentiate
            return f"const {value:g}", "#dddddd"                            # a constant folded into the graph


        def draw_graph(root, ax):
            """Draw the graph of `root` left (leaves) to right (root); arrows follow the forward pass."""
            order, level = graph_nodes(root)
            depth = max(level.values())
            columns = {}
            for node in order:
                columns.setdefault(level[id(node)], []).append(node)
            pos = {}
            for k, nodes in columns.items():
                for i, node in enumerate(nodes):
                    pos[id(node)] = (depth - k, (len(nodes) - 1) / 2 - i)
            for node in order:
                for parent in (node._ctx.inputs if node._ctx is not None else ()):
                    ax.annotate("", xy=pos[id(node)], xytext=pos[id(parent)],
                                arrowprops=dict(arrowstyle="->", shrinkA=28, shrinkB=28, color="0.3"))
            for node in order:
                text, colour = node_label(node)
                ax.text(*pos[id(node)], text, ha="center", va="center", fontsize=10,
                        bbox=dict(boxstyle="round,pad=0.4", fc=colour, ec="0.4"))
            ax.set_xlim(-0.6, depth + 0.6)
            ax.set_ylim(-1.5, 1.5)
            ax.axis("off")


        fig, ax = plt.subplots(figsize=(10, 3.2))
        draw_graph(L, ax)
        ax.set_title("The graph recorded by the forward pass of L = (tanh(w x + b) - t)^2")
        plt.show()
        '''),
        md(r'''
        Blue boxes are the leaves we asked gradients for, grey ones constants (the target $t$ was turned
        into a tensor without a gradient), orange ones operations with the value they produced. The
        exponent 2 is not a box: it is a fixed parameter of the `Pow` operation, not an input.

        ## 2. The chain rule, by hand

        $L$ depends on $w$ only through $z$, and on $z$ only through $a$. The chain rule multiplies the
        local derivatives along that path:

        $$\frac{\partial L}{\partial w}
          = \frac{\partial L}{\partial a}\,\frac{\partial a}{\partial z}\,\frac{\partial z}{\partial w}
          = 2(a - t)\,\bigl(1 - a^2\bigr)\,x .$$

        *Reverse mode* evaluates such products starting from the loss. It first computes
        $\partial L/\partial a$, then $\partial L/\partial z = \partial L/\partial a \cdot (1 - a^2)$, a
        number that is **shared** by everything below $z$, and then needs only one multiplication per
        input of $z$: $\partial L/\partial w = \partial L/\partial z \cdot x$,
        $\partial L/\partial x = \partial L/\partial z \cdot w$, $\partial L/\partial b = \partial L/\partial z$.
        One backward sweep gives the gradient with respect to every input at roughly the cost of the
        forward pass. A network has one scalar loss and millions of parameters, which is exactly the
        case where this pays off.
        '''),
        code(r'''
        xv, wv, bv = 0.5, -1.5, 0.25
        zv = wv * xv + bv
        av = np.tanh(zv)
        dL_da = 2 * (av - target)
        dL_dz = dL_da * (1 - av**2)  # tanh'(z) = 1 - tanh(z)^2
        by_hand = {"x": dL_dz * wv, "w": dL_dz * xv, "b": dL_dz}
        for name, value in by_hand.items():
            print(f"dL/d{name} by hand: {value:+.12f}")
        '''),
        md(r'''
        ## 3. How minires records the graph

        Every tensor produced by an operation carries `_ctx`, a `Context` object that remembers:

        * `fn`: the `Function` subclass that made the tensor (`Mul`, `Tanh`, ...);
        * `inputs`: the input tensors, i.e. the edges of the graph;
        * `needs_input_grad`: which inputs need a gradient, so `backward` may skip work;
        * `saved_tensors`: the raw arrays that the backward formula will need (for `tanh`, its output).

        Leaves have `_ctx = None`.
        '''),
        code(r'''
        def describe(name, tensor):
            ctx = tensor._ctx
            if ctx is None:
                return f"{name}: a leaf, requires_grad={tensor.requires_grad}"
            saved = [np.round(np.asarray(s), 4).tolist() for s in ctx.saved_tensors]
            return (f"{name}: made by {ctx.fn.__name__} from {len(ctx.inputs)} input(s); "
                    f"needs_input_grad={ctx.needs_input_grad}; saved for backward: {saved}")


        for name, tensor in [("L", L), ("a", a), ("z", z), ("w", w)]:
            print(describe(name, tensor))
        '''),
        md(r'''
        A `Function` is a pair of static methods on **raw arrays** (NumPy, or CuPy on a GPU): `forward`
        computes the output and saves what the backward pass will need; `backward` receives
        `grad` $= \partial L/\partial(\text{output})$ and returns one gradient per input, the chain rule
        applied locally. Here are two of minires's own operations, exactly as they are in
        `minires/ops/elementwise.py`:
        '''),
        code(r'''
        from minires.ops import elementwise

        print(inspect.getsource(elementwise.Mul))
        print(inspect.getsource(elementwise.Tanh))
        '''),
        md(r'''
        `Function.apply` (in `minires/function.py`) is the glue: it unwraps the tensors, calls `forward`,
        wraps the result in a new `Tensor` and, if any input needs a gradient, attaches the `Context`.

        `backward()` then **replays** the graph in reverse. It puts the tensors in topological order
        (every tensor after the tensors it was computed from), walks that order backwards, and hands
        each node the *sum* of the gradients sent by all of its consumers. The real implementation
        (`_run_backward` in `minires/tensor.py`) adds hooks, error messages and memory release; the
        essence fits in one cell. We write it ourselves and compare.
        '''),
        code(r'''
        def my_backward(root):
            """Reverse-mode sweep over root's graph; returns {leaf name: dL/dleaf} (root must be a scalar)."""
            # 1. Topological order: a tensor is appended only after everything it was computed from.
            #    (Recursion keeps this short; minires uses an explicit stack, because a 1000-layer network
            #    would exceed Python's recursion limit.)
            order, seen = [], set()

            def visit(node):
                if id(node) in seen or not node.requires_grad:
                    return
                seen.add(id(node))
                for parent in (node._ctx.inputs if node._ctx is not None else ()):
                    visit(parent)
                order.append(node)

            visit(root)
            # 2. Walk it backwards. `pending` collects, per tensor, the SUM of what its consumers sent.
            pending = {id(root): np.ones_like(root.data)}
            grads = {}
            for node in reversed(order):
                grad = pending.pop(id(node), None)
                if grad is None:
                    continue
                if node._ctx is None:
                    grads[node.name] = grad
                    continue
                input_grads = node._ctx.fn.backward(node._ctx, grad)  # the local chain rule
                if not isinstance(input_grads, tuple):
                    input_grads = (input_grads,)
                for parent, g in zip(node._ctx.inputs, input_grads):
                    if g is not None and parent.requires_grad:
                        pending[id(parent)] = pending.get(id(parent), 0) + g
            return grads


        mine = my_backward(L)  # reads the graph without changing it
        L.backward()           # minires's own sweep: fills .grad of the leaves
        engine = {"x": float(x.grad), "w": float(w.grad), "b": float(b.grad)}  # kept for section 7
        print(f"{'':>6} {'by hand':>18} {'my_backward':>18} {'L.backward()':>18}")
        for name in "xwb":
            print(f"dL/d{name} {by_hand[name]:+18.12f} {float(mine[name]):+18.12f} {engine[name]:+18.12f}")
        '''),
        md(r'''
        All three agree to every printed digit. Two details of minires's `backward()` are worth knowing
        (they are PyTorch's semantics too):

        * after `backward()` the graph is **freed**: the saved arrays are dropped so their memory can be
          reused by the next forward pass. A second `backward()` through the same graph is an error,
          unless the first one was called with `retain_graph=True`;
        * gradients **accumulate** into `.grad`: two backward passes add up. That is why a training loop
          calls `optimizer.zero_grad()` (or sets `.grad = None`) before each `backward()`.
        '''),
        code(r'''
        print("graph released after backward():", L._ctx.released)
        try:
            L.backward()
        except RuntimeError as err:
            print("second backward() ->", err)

        # Accumulation: two backward passes through a retained graph add up.
        x.grad = None
        L2 = (w * x + b).tanh()
        L2.backward(retain_graph=True)
        once = float(x.grad)
        L2.backward()
        print(f"dL2/dx after one backward: {once:+.6f}; after two: {float(x.grad):+.6f}")
        '''),
        md(r'''
        ## 4. A tensor used twice: gradients add

        When a value feeds several operations, a change in it changes the loss along every path, so its
        gradient is the **sum** of the contributions of all its consumers. That is the `+` in
        `pending.get(...) + g` above. For $y = u\cdot u + u$, $u$ is used three times and
        $dy/du = 2u + 1$.

        Keep this in mind for residual networks: in $y = F(x) + x$ the gradient reaching $x$ is the
        gradient through the branch $F$ *plus* the gradient through the shortcut, which arrives
        untouched.
        '''),
        code(r'''
        u = leaf(3.0, "u")
        y = u * u + u
        y.backward()
        print(f"dy/du from backward(): {float(u.grad)};  2u + 1 = {2 * 3.0 + 1}")
        '''),
        md(r'''
        ## 5. Writing your own `Function`

        Suppose minires lacked softplus, $\operatorname{softplus}(x) = \log(1 + e^x)$, a smooth version of
        ReLU. Its derivative is the logistic sigmoid: $\frac{d}{dx}\log(1+e^x) = \frac{e^x}{1+e^x} = \sigma(x)$.
        A `Function` needs the forward formula, the backward formula, and whatever the backward needs
        saved. Two habits from minires's own code: use `xp = get_array_module(x)` instead of `np`, so the
        same code runs on CuPy arrays on a GPU, and choose formulas that cannot overflow.
        '''),
        code(r'''
        class Softplus(minires.Function):
            """softplus(x) = log(1 + exp(x)), elementwise: any shape in, the same shape out."""

            @staticmethod
            def forward(ctx, x):
                xp = minires.get_array_module(x)
                ctx.save_for_backward(x)
                return xp.logaddexp(0, x)  # log(e^0 + e^x), computed without overflowing for large x

            @staticmethod
            def backward(ctx, grad):
                (x,) = ctx.saved_tensors
                xp = minires.get_array_module(x)
                sigmoid = 0.5 * (1 + xp.tanh(x / 2))  # = 1 / (1 + e^-x), but never overflows
                return grad * sigmoid                 # chain rule: upstream gradient times local derivative


        def softplus(t):
            return Softplus.apply(t)


        xs = Tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)  # a float64 NumPy array keeps its dtype
        print("softplus:", softplus(xs))
        '''),
        md(r'''
        Now check the backward pass three ways.

        1. **By hand**: the derivative at $-2, 0, 3$ is $\sigma(-2) \approx 0.1192$, $\sigma(0) = 0.5$,
           $\sigma(3) \approx 0.9526$.
        2. **With `backward()`**, seeded with a random upstream gradient $g$: the result must be
           $g \cdot \sigma(x)$, elementwise.
        3. **With `minires.gradcheck`**: it computes the same quantity by central finite differences and
           compares every element.
        '''),
        code(r'''
        rng = np.random.default_rng(0)
        g = rng.standard_normal(3)

        sigma = 1 / (1 + np.exp(-xs.data))
        print("by hand, sigma(x):", np.round(sigma, 4))

        xs.grad = None
        softplus(xs).backward(g)
        print("backward(g) / g  :", np.round(xs.grad / g, 4))

        x_check = Tensor(rng.standard_normal((4, 5)), requires_grad=True)  # float64
        print("gradcheck        :", minires.gradcheck(softplus, [x_check], seed=0))
        '''),
        md(r'''
        ### Why the upstream gradient must be random

        `gradcheck` seeds the backward pass with a **random** $g$ and compares it with the numerical
        derivative of $\langle f(x), g\rangle = \sum_i f(x)_i\, g_i$. A tempting shortcut is to check
        `f(x).sum().backward()`, i.e. $g = 1$ everywhere. Here is a classic bug that this shortcut cannot
        see: a backward pass that forgets to multiply by the upstream gradient. With $g = 1$,
        multiplying by $g$ changes nothing, so the bug is invisible.
        '''),
        code(r'''
        class SoftplusForgetsGrad(Softplus):
            @staticmethod
            def backward(ctx, grad):
                (x,) = ctx.saved_tensors
                return 0.5 * (1 + np.tanh(x / 2))  # BUG: the upstream gradient `grad` is dropped


        def buggy(t):
            return SoftplusForgetsGrad.apply(t)


        x_bug = Tensor(rng.standard_normal(6), requires_grad=True)
        ones = np.ones(6)
        buggy(x_bug).backward(ones)
        numeric = minires.numerical_gradient(buggy, [x_bug], 0, ones)
        print(f"check with g = 1: max |backward - numeric| = {np.abs(x_bug.grad - numeric).max():.1e}  (looks fine!)")

        try:
            minires.gradcheck(buggy, [x_bug], seed=0)
        except minires.GradcheckError as err:
            print("gradcheck with a random g:", err)
        '''),
        md(r'''
        ## 6. Why gradient checks use float64 and central differences

        The numerical derivative $\frac{f(x+\varepsilon) - f(x-\varepsilon)}{2\varepsilon}$ has two
        errors pulling in opposite directions:

        * **truncation**: the formula is exact only as $\varepsilon \to 0$; its error shrinks like
          $\varepsilon^2$ (the one-sided $\frac{f(x+\varepsilon) - f(x)}{\varepsilon}$ only like
          $\varepsilon$);
        * **rounding**: $f$ is computed with a relative precision of about $10^{-16}$ in float64 but only
          $10^{-7}$ in float32, and dividing the rounding error by $2\varepsilon$ magnifies it.

        The plot measures both for softplus at $x = 0.3$. In float32 the error stays around $10^{-5}$ or
        worse for every step size (an isolated dip is a lucky cancellation, not something to rely on),
        and at $\varepsilon = 10^{-6}$ it is about $10^{-2}$: far too coarse to tell a correct backward
        pass from a slightly wrong one. In float64 with central differences it falls to about
        $10^{-11}$ near $\varepsilon = 10^{-6}$, the default step of `gradcheck` (grey line).
        '''),
        code(r'''
        eps_values = np.logspace(-12, -1, 12 if QUICK else 45)
        x0 = 0.3
        exact = 1 / (1 + np.exp(-x0))

        fig, ax = plt.subplots(figsize=(7, 4))
        for dtype, colour in [(np.float32, "C3"), (np.float64, "C0")]:
            f = lambda v: np.logaddexp(dtype(0), dtype(v))  # noqa: E731 (softplus in the given precision)
            central = [abs(float((f(x0 + e) - f(x0 - e)) / dtype(2 * e)) - exact) for e in eps_values]
            forward = [abs(float((f(x0 + e) - f(x0)) / dtype(e)) - exact) for e in eps_values]
            name = np.dtype(dtype).name
            ax.loglog(eps_values, np.maximum(central, 1e-17), "-o", ms=3, color=colour, label=f"{name}, central")
            ax.loglog(eps_values, np.maximum(forward, 1e-17), "--", color=colour, alpha=0.6, label=f"{name}, one-sided")
        ax.axvline(1e-6, color="0.5", lw=0.8)
        ax.set_xlabel(r"step $\varepsilon$")
        ax.set_ylabel("|numerical - exact derivative|")
        ax.set_title("Finite-difference error of d softplus/dx at x = 0.3")
        ax.legend(fontsize="small")
        ax.grid(True, which="both", alpha=0.3)
        plt.show()
        '''),
        md(r'''
        ## 7. Optional: the same gradients from PyTorch

        minires follows PyTorch's names and semantics, so the same computation gives the same numbers.
        This cell runs only if PyTorch happens to be installed; nothing else in the tutorials needs it.
        '''),
        code(r'''
        try:
            import torch
        except ImportError:
            torch = None
            print("PyTorch is not installed: skipping the optional cross-check.")

        if torch is not None:
            tx, tw, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.5, -1.5, 0.25))
            tL = (torch.tanh(tw * tx + tb) - target) ** 2
            tL.backward()
            for name, tt in [("x", tx), ("w", tw), ("b", tb)]:
                print(f"dL/d{name}: torch {tt.grad.item():+.12f}   minires {engine[name]:+.12f}")
        '''),
        md(r'''
        ## Summary

        * The forward pass records a graph: each result keeps a `Context` with its `Function`, its inputs
          and the arrays its backward pass needs.
        * `backward()` visits the graph in reverse topological order and applies each `Function`'s local
          chain rule; a tensor used several times receives the sum of its consumers' gradients.
        * A new operation is a `Function` with `forward` and `backward` on raw arrays.
        * Check every backward pass against central differences in float64 with a random upstream
          gradient; an all-ones upstream gradient hides real bugs (notebook 3 shows a worse case).

        ## Exercises

        **Exercise 1 (chain rule by hand).** Logistic regression on one example with label 1 has the loss
        $L = -\log \sigma(\mathbf{w}\cdot\mathbf{x})$. Derive $\partial L/\partial \mathbf{w}$ by hand and
        check it against `backward()` for a random 5-vector $\mathbf{w}$ and $\mathbf{x}$, using minires
        operations (`*`, `.sum()`, `.sigmoid()`, `.log()`).
        '''),
        solution(r'''
        # Solution to exercise 1
        # dL/ds = -1/s and ds/dz = s (1 - s) for z = w . x, so dL/dz = -(1 - s) and dL/dw = -(1 - s) x.
        rng = np.random.default_rng(1)
        w_vec = Tensor(rng.standard_normal(5), requires_grad=True)
        x_vec = Tensor(rng.standard_normal(5))
        loss = -(w_vec * x_vec).sum().sigmoid().log()
        loss.backward()
        s = 1 / (1 + np.exp(-(w_vec.data @ x_vec.data)))
        print("by hand   :", np.round(-(1 - s) * x_vec.data, 10))
        print("backward():", np.round(w_vec.grad, 10))
        '''),
        md(r'''
        **Exercise 2 (your own Function).** Write a `Function` for SiLU (also called swish),
        $\operatorname{silu}(x) = x\,\sigma(x)$, derive its derivative, and verify it with `gradcheck`.
        Then introduce a deliberate mistake in the derivative and watch `gradcheck` fail.
        '''),
        solution(r'''
        # Solution to exercise 2
        # d/dx [x s(x)] = s(x) + x s(x) (1 - s(x)) = s(x) (1 + x (1 - s(x))).
        class SiLU(minires.Function):
            @staticmethod
            def forward(ctx, x):
                xp = minires.get_array_module(x)
                s = 0.5 * (1 + xp.tanh(x / 2))
                ctx.save_for_backward(x, s)
                return x * s

            @staticmethod
            def backward(ctx, grad):
                x, s = ctx.saved_tensors
                return grad * s * (1 + x * (1 - s))


        class SiLUWrong(SiLU):
            @staticmethod
            def backward(ctx, grad):
                x, s = ctx.saved_tensors
                return grad * s * (1 + x * s)  # mistake: (1 - s) replaced by s


        x_silu = Tensor(np.random.default_rng(2).standard_normal((3, 4)), requires_grad=True)
        print("SiLU gradcheck:", minires.gradcheck(lambda t: SiLU.apply(t), [x_silu], seed=0))
        try:
            minires.gradcheck(lambda t: SiLUWrong.apply(t), [x_silu], seed=0)
        except minires.GradcheckError as err:
            print("the wrong derivative is caught:", str(err)[:110], "...")
        '''),
        md(r'''
        **Exercise 3 (why gradients must add).** Copy `my_backward` into a function `overwriting_backward`
        that *replaces* a pending gradient instead of adding to it
        (`pending[id(parent)] = g`). Find a small graph where it gives a wrong answer, and one where it
        still gives the right answer. What property of the graph decides?
        '''),
        solution(r'''
        # Solution to exercise 3
        # The answer goes wrong exactly when some tensor is consumed more than once (the graph is not a tree).
        source = inspect.getsource(my_backward)
        source = source.replace("def my_backward", "def overwriting_backward")
        source = source.replace("pending[id(parent)] = pending.get(id(parent), 0) + g", "pending[id(parent)] = g")
        exec(source)  # defines overwriting_backward

        p = leaf(3.0, "p")
        print("p used three times, y = p*p + p: right", my_backward(p * p + p)["p"],
              "| overwriting", overwriting_backward(p * p + p)["p"])
        q, r = leaf(3.0, "q"), leaf(2.0, "r")
        print("each leaf used once, y = q*r + 1: right", my_backward(q * r + 1)["q"],
              "| overwriting", overwriting_backward(q * r + 1)["q"])
        '''),
    ]


def notebook_02():
    return [
        md(r'''
        # 2. Convolution as im2col + one matrix product

        A convolution layer slides a small kernel over an image and takes a dot product at every
        position. Written as loops that is millions of tiny dot products, and Python is slow at tiny
        things. Every fast CPU and GPU implementation instead rearranges the work so that it becomes a
        few large matrix products (GEMMs), which BLAS libraries run close to the machine's peak. The
        classic rearrangement is **im2col**, and it is how minires's reference convolution works
        (`minires/kernels/im2col.py` and `minires/kernels/conv.py`).

        **By the end of this notebook you will understand**

        * exactly what a 2-D convolution computes, and the formula for its output size;
        * how im2col copies every window of the input into one column of a matrix, so that the whole
          convolution becomes a single matrix product;
        * what that column matrix looks like, and why it costs about $k^2$ times the memory of the input;
        * why **col2im**, which the backward pass uses, is the *adjoint* of im2col and not its inverse,
          and why it therefore *sums* overlapping windows;
        * how much faster the matrix-product formulation is than loops.
        '''),
        setup('''
        import os
        import time

        import matplotlib.pyplot as plt
        import numpy as np

        import minires
        from minires import Tensor
        from minires.kernels.im2col import col2im, im2col
        from minires.nn import functional as F
        '''),
        md(r'''
        ## 1. What a convolution computes

        Input $x$ has shape $(N, C, H, W)$ (batch, channels, height, width: "NCHW"), the weight has shape
        $(O, C, k_H, k_W)$: $O$ output channels, each a $C \times k_H \times k_W$ kernel. With stride $s$
        and zero padding $p$,

        $$y[n, o, h, w] = \sum_{c,\,i,\,j} \mathrm{weight}[o, c, i, j]\;
          x_{\mathrm{pad}}[n, c,\; h s + i,\; w s + j],
          \qquad H_{out} = \left\lfloor \frac{H + 2p - k_H}{s} \right\rfloor + 1 .$$

        (Strictly this is a cross-correlation, as in every deep-learning library: the kernel is not
        flipped.) The direct translation into loops:
        '''),
        code(r'''
        def conv2d_loops(x, weight, stride=1, padding=0):
            """Direct convolution: x (N, C, H, W), weight (O, C, k, k) -> (N, O, H_out, W_out)."""
            n, c, h, w = x.shape
            o, _, k, _ = weight.shape
            xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
            h_out = (h + 2 * padding - k) // stride + 1
            w_out = (w + 2 * padding - k) // stride + 1
            y = np.zeros((n, o, h_out, w_out), dtype=x.dtype)
            for b in range(n):
                for f in range(o):
                    for r in range(h_out):
                        for q in range(w_out):
                            window = xpad[b, :, r * stride:r * stride + k, q * stride:q * stride + k]
                            y[b, f, r, q] = np.sum(window * weight[f])  # one dot product of C*k*k numbers
            return y


        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 3, 7, 7))
        weight = rng.standard_normal((4, 3, 3, 3))
        y_loops = conv2d_loops(x, weight, stride=2, padding=1)
        y_minires = F.conv2d(Tensor(x), Tensor(weight), stride=2, padding=1).numpy()
        print("output shape:", y_loops.shape, "| max |loops - minires|:", np.abs(y_loops - y_minires).max())
        '''),
        md(r'''
        ## 2. im2col: every window becomes a column

        Look at the inner loop: each output value is the dot product of one kernel with one window.
        **im2col** ("image to columns") copies every window into a column of a matrix. For one image,
        the columns matrix has one **row per kernel tap** $(c, i, j)$, i.e. $C k_H k_W$ rows, and one
        **column per output position** $(h, w)$, i.e. $L = H_{out} W_{out}$ columns. minires uses
        PyTorch's `unfold` layout: rows run over $(c, i, j)$ with $j$ fastest, columns over $(h, w)$
        with $w$ fastest.

        A 4x4 image holding the numbers 0..15 and a 3x3 kernel (no padding, stride 1) has four window
        positions, so its column matrix is $9 \times 4$:
        '''),
        code(r'''
        toy = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
        cols = im2col(toy, kernel_size=3)  # (N, C*k*k, L) = (1, 9, 4)
        print("columns shape:", cols.shape)
        print(cols[0].astype(int))

        fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), gridspec_kw={"width_ratios": [4, 4]})
        for ax, data, title in [(axes[0], toy[0, 0], "image (4x4)"), (axes[1], cols[0], "columns (9 taps x 4 windows)")]:
            ax.imshow(data, cmap="viridis")
            for (r, q), v in np.ndenumerate(data):
                ax.text(q, r, int(v), ha="center", va="center", color="w", fontsize=9)
            ax.set_title(title)
        axes[1].set_xlabel("window position (h, w)")
        axes[1].set_ylabel("kernel tap (i, j)")
        axes[1].set_xticks(range(4), ["(0,0)", "(0,1)", "(1,0)", "(1,1)"])
        axes[1].set_yticks(range(9), [f"({i},{j})" for i in range(3) for j in range(3)])
        axes[0].set_xticks([]); axes[0].set_yticks([])
        plt.show()
        '''),
        md(r'''
        Column 0 is the top-left window $[0, 1, 2, 4, 5, 6, 8, 9, 10]$, read row by row. Read the matrix
        the other way and it is just as informative: **row $(i, j)$ is the image shifted by $(i, j)$**,
        one entry per window. With padding 1, each of the nine rows of a 3x3 convolution, reshaped to
        $H \times W$, is a shifted copy of the whole image, with zeros moving in from the border:
        '''),
        code(r'''
        size = 16
        yy, xx = np.mgrid[0:size, 0:size]
        ring = ((np.hypot(yy - 7.5, xx - 7.5) < 6) & (np.hypot(yy - 7.5, xx - 7.5) > 3)).astype(np.float64)
        ring[2:5, 9:14] = 1.0  # a bar, so that the shifts are easy to see
        ring_cols = im2col(ring.reshape(1, 1, size, size), kernel_size=3, padding=1)
        print("columns shape:", ring_cols.shape, "(9 taps, 16 x 16 = 256 windows)")

        fig, axes = plt.subplots(3, 3, figsize=(6, 6))
        for tap, ax in enumerate(axes.flat):
            i, j = divmod(tap, 3)
            ax.imshow(ring_cols[0, tap].reshape(size, size), cmap="gray_r")
            ax.axhline(7.5, color="C3", lw=0.8)  # fixed reference lines make the one-pixel shifts visible
            ax.axvline(7.5, color="C3", lw=0.8)
            ax.set_title(f"row (i={i}, j={j})", fontsize=9)
            ax.set_xticks([]); ax.set_yticks([])
        fig.suptitle("The 9 rows of im2col(image), each reshaped to 16 x 16")
        plt.show()
        '''),
        md(r'''
        ## 3. The whole convolution is one matrix product

        Reshape the weight into a matrix $W_{mat}$ of shape $(O, C k_H k_W)$: row $o$ is kernel $o$
        flattened in the same $(c, i, j)$ order as the rows of the columns matrix. Then every output
        value is (row of $W_{mat}$) $\cdot$ (column of cols), and all of them together are

        $$Y = W_{mat}\; \mathrm{cols}, \qquad (O, C k^2) \times (C k^2, L) \to (O, L),$$

        which reshapes to $(O, H_{out}, W_{out})$. NumPy's `@` broadcasts this over the batch axis.
        '''),
        code(r'''
        def conv2d_im2col(x, weight, stride=1, padding=0):
            """Convolution as im2col + one matrix product: x (N, C, H, W), weight (O, C, k, k)."""
            n, _, h, w = x.shape
            o, _, k, _ = weight.shape
            h_out = (h + 2 * padding - k) // stride + 1
            w_out = (w + 2 * padding - k) // stride + 1
            cols = im2col(x, k, stride=stride, padding=padding)  # (N, C*k*k, L)
            y = weight.reshape(o, -1) @ cols                     # (O, C*k*k) @ (N, C*k*k, L) -> (N, O, L)
            return y.reshape(n, o, h_out, w_out)


        y_gemm = conv2d_im2col(x, weight, stride=2, padding=1)
        print("max |im2col+GEMM - loops|:", np.abs(y_gemm - y_loops).max())

        try:
            import torch
        except ImportError:
            torch = None
            print("(PyTorch not installed: skipping the optional cross-check)")
        if torch is not None:
            y_torch = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), stride=2, padding=1)
            print("max |im2col+GEMM - torch|:", np.abs(y_gemm - y_torch.numpy()).max())
        '''),
        md(r'''
        ## 4. The price: memory

        Every pixel is copied into the columns matrix once for every window that contains it: about
        $k_H k_W$ times for stride 1. With "same" padding ($p = \lfloor k/2 \rfloor$) there are exactly
        $H W$ windows and the columns matrix is exactly $k^2$ times larger than the input. Let us measure
        it on a CIFAR-sized layer (16 channels, 32x32).
        '''),
        code(r'''
        batch = 2 if QUICK else 8
        x_layer = np.zeros((batch, 16, 32, 32), dtype=np.float32)
        print(f"input {x_layer.shape}, float32: {x_layer.nbytes / 2**20:.2f} MiB")
        print(f"{'kernel':>6} {'stride':>6} {'columns shape':>20} {'columns MiB':>12} {'x input':>8}")
        for k, s in [(1, 1), (3, 1), (5, 1), (7, 1), (3, 2)]:
            c = im2col(x_layer, k, stride=s, padding=k // 2)
            print(f"{k:>6} {s:>6} {str(c.shape):>20} {c.nbytes / 2**20:>12.2f} {c.nbytes / x_layer.nbytes:>7.2f}x")

        # The same arithmetic for a real training batch: 128 images, 16 channels, 3x3, stride 1.
        x_bytes = 128 * 16 * 32 * 32 * 4
        print(f"\nbatch 128: input {x_bytes / 1e6:.1f} MB, columns {9 * x_bytes / 1e6:.1f} MB for ONE 3x3 layer")
        '''),
        md(r'''
        The ratio is $k^2$ for stride 1 and about $k^2/s^2$ for stride $s$. At batch 128 one 3x3 layer of
        a CIFAR ResNet needs 75 MB of columns: far more than any CPU cache, so a naive im2col
        convolution spends much of its time moving memory rather than multiplying. minires's fast path
        (the docstring of `minires/kernels/conv.py` tells the whole story) keeps the same mathematics but
        unfolds only along the width (3 copies instead of 9), works on a few images at a time so the
        buffers stay in cache, and never builds the full-batch matrix. The reference implementation
        above is the one to read; the fast one is checked against it by the tests.

        ## 5. col2im is the adjoint of im2col, not its inverse

        The backward pass of $Y = W_{mat}\,\mathrm{cols}$ gives the gradient with respect to the
        columns, $\partial L/\partial \mathrm{cols} = W_{mat}^\top\,\partial L/\partial Y$. To reach the
        input image we need the backward pass of im2col itself. im2col is a **linear** map $A$ from
        images to column matrices (each entry is a copy of one pixel or a padding zero), so its backward
        pass is multiplication by the transpose $A^\top$, the unique linear map with

        $$\langle A x, y \rangle = \langle x, A^\top y \rangle \quad \text{for all } x, y .$$

        That map is **col2im**. Read the identity entry by entry: pixel $x[n,c,h,w]$ appears in the
        left-hand sum once for every column entry it was copied to, so $(A^\top y)[n,c,h,w]$ must be the
        **sum** of $y$ over exactly those entries. Gradients from overlapping windows add up, as they
        must (a pixel used by nine windows influences the loss nine ways). Let us check the identity
        numerically for several settings:
        '''),
        code(r'''
        rng = np.random.default_rng(1)
        x_adj = rng.standard_normal((2, 3, 7, 7))
        print(f"{'k':>2} {'stride':>6} {'pad':>3} {'dil':>3} {'<im2col(x), y>':>16} {'<x, col2im(y)>':>16} {'rel. diff':>9}")
        for k, s, p, d in [(3, 1, 1, 1), (3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 0, 2), (5, 3, 2, 1)]:
            cols_x = im2col(x_adj, k, stride=s, padding=p, dilation=d)
            y_adj = rng.standard_normal(cols_x.shape)
            lhs = np.sum(cols_x * y_adj)
            rhs = np.sum(x_adj * col2im(y_adj, x_adj.shape, k, stride=s, padding=p, dilation=d))
            print(f"{k:>2} {s:>6} {p:>3} {d:>3} {lhs:>16.10f} {rhs:>16.10f} {abs(lhs - rhs) / abs(lhs):>9.1e}")
        '''),
        md(r'''
        The two inner products agree to rounding error in every case. Now the "not an inverse" part:
        feed col2im the columns of an all-ones image. Each pixel comes back multiplied by the number of
        windows that contain it: 4 in the corners, 6 along the edges, 9 inside (3x3 kernel, stride 1,
        padding 1). Only when windows neither overlap nor skip pixels (stride = kernel size, no padding)
        is col2im(im2col(x)) equal to x.
        '''),
        code(r'''
        ones = np.ones((1, 1, 6, 6))
        counts = col2im(im2col(ones, 3, padding=1), ones.shape, 3, padding=1)[0, 0]

        fig, ax = plt.subplots(figsize=(3.6, 3.6))
        ax.imshow(counts, cmap="Blues", vmin=0)
        for (r, q), v in np.ndenumerate(counts):
            ax.text(q, r, int(v), ha="center", va="center", color="w" if v > 6 else "k")
        ax.set_title("col2im(im2col(ones))\n3x3, stride 1, padding 1", fontsize=10)
        ax.set_xticks([]); ax.set_yticks([])
        plt.show()

        x_tiles = np.random.default_rng(2).standard_normal((1, 2, 6, 6))
        back = col2im(im2col(x_tiles, 2, stride=2), x_tiles.shape, 2, stride=2)
        print("2x2 kernel, stride 2 (non-overlapping tiles): col2im(im2col(x)) == x ?", np.array_equal(back, x_tiles))
        '''),
        md(r'''
        The differentiable `minires.nn.functional.im2col` has exactly this backward pass, and the whole
        convolution passes a gradient check (float64, random upstream gradient, every element):
        '''),
        code(r'''
        rng = np.random.default_rng(3)
        xt = Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
        cols_t = F.im2col(xt, 3, padding=1)
        upstream = rng.standard_normal(cols_t.shape)
        cols_t.backward(upstream)
        print("im2col backward == col2im(upstream):",
              np.allclose(xt.grad, col2im(upstream, xt.shape, 3, padding=1), rtol=0, atol=1e-12))

        xg = Tensor(rng.standard_normal((2, 2, 5, 5)), requires_grad=True)
        wg = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
        bg = Tensor(rng.standard_normal(3), requires_grad=True)
        ok = minires.gradcheck(lambda a, k, c: F.conv2d(a, k, c, stride=2, padding=1), [xg, wg, bg], seed=0)
        print("gradcheck of conv2d (input, weight and bias):", ok)
        '''),
        md(r'''
        ## 6. How much faster?

        We time three implementations on the same small problem: the loops of section 1, im2col + one
        matrix product (section 3), and `minires.nn.functional.conv2d`, whose fast path adds the
        memory-saving tricks described in section 4. (Sizes are kept small so the loops finish quickly;
        the gap widens with size.)
        '''),
        code(r'''
        def best_time(fn, repeats):
            """Best wall-clock time of `repeats` calls, in milliseconds (the minimum is the least noisy)."""
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return 1e3 * min(times)


        n, c, hw, o = (2, 4, 10, 8) if QUICK else (8, 16, 16, 16)
        rng = np.random.default_rng(4)
        xb = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        wb = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
        reference = conv2d_loops(xb, wb, padding=1)
        candidates = {
            "loops": lambda: conv2d_loops(xb, wb, padding=1),
            "im2col + GEMM": lambda: conv2d_im2col(xb, wb, padding=1),
            "minires F.conv2d": lambda: F.conv2d(Tensor(xb), Tensor(wb), padding=1).numpy(),
        }
        print(f"x {xb.shape}, weight {wb.shape}, padding 1, float32")
        print(f"{'implementation':>18} {'time (ms)':>10} {'speed-up':>9} {'max |error|':>12}")
        base = None
        for name, fn in candidates.items():
            ms = best_time(fn, 1 if name == "loops" else 5)
            base = base or ms
            err = np.abs(fn() - reference).max()
            print(f"{name:>18} {ms:>10.2f} {base / ms:>8.0f}x {err:>12.1e}")
        '''),
        md(r'''
        The loops spend almost all of their time in the Python interpreter, one small dot product at a
        time; the matrix product hands all the arithmetic to BLAS in one call. On a problem this small the
        columns fit in cache anyway, so the fast path's extra machinery (chunks, threads) buys nothing
        over the plain im2col version; its gains appear at training sizes, where the columns of a whole
        batch would not fit (`benchmarks/bench_layers.py` measures them). The small differences in the
        last column are float32 rounding: the implementations add the same numbers in different orders.

        ## Summary

        * A convolution is one dot product per (output channel, window). im2col puts every window in a
          column so that all of them become one matrix product $W_{mat}\,\mathrm{cols}$.
        * The columns matrix costs about $k^2/s^2$ times the memory of the input.
        * The backward pass needs col2im, the **adjoint** (transpose) of im2col: it adds each column
          entry back onto the pixel it came from, summing overlapping windows. It is not an inverse.

        ## Exercises

        **Exercise 1 (shapes).** A 3x3 convolution with stride 2 and padding 1 is applied to a batch of
        shape $(8, 16, 32, 32)$. Predict the shape of the columns matrix and of the output for 32 output
        channels, then check with `im2col` and `F.conv2d`.
        '''),
        solution(r'''
        # Solution to exercise 1
        # H_out = floor((32 + 2*1 - 3) / 2) + 1 = 16, so L = 16 * 16 = 256 windows and C*k*k = 16*9 = 144 rows.
        xe = np.zeros((8, 16, 32, 32), dtype=np.float32)
        print("columns:", im2col(xe, 3, stride=2, padding=1).shape, "expected (8, 144, 256)")
        we = np.zeros((32, 16, 3, 3), dtype=np.float32)
        print("output:", F.conv2d(Tensor(xe), Tensor(we), stride=2, padding=1).shape, "expected (8, 32, 16, 16)")
        '''),
        md(r'''
        **Exercise 2 (the weight gradient).** The weight gradient reuses the same columns:
        $\partial L/\partial W_{mat} = \sum_n G_n\,\mathrm{cols}_n^\top$, where
        $G_n = \partial L/\partial Y_n$ has shape $(O, L)$. Compute it with NumPy for a random upstream
        gradient and compare with `weight.grad` after `F.conv2d(...).backward(upstream)`.
        '''),
        solution(r'''
        # Solution to exercise 2
        rng = np.random.default_rng(5)
        xs = rng.standard_normal((3, 2, 6, 6))
        ws = Tensor(rng.standard_normal((4, 2, 3, 3)), requires_grad=True)
        out = F.conv2d(Tensor(xs), ws, padding=1)
        g = rng.standard_normal(out.shape)
        out.backward(g)

        cols_s = im2col(xs, 3, padding=1)                          # (N, C*k*k, L)
        g_mat = g.reshape(g.shape[0], g.shape[1], -1)              # (N, O, L)
        dw = (g_mat @ cols_s.transpose(0, 2, 1)).sum(axis=0)       # sum over n of G_n cols_n^T -> (O, C*k*k)
        print("max |by hand - autograd|:", np.abs(dw.reshape(ws.shape) - ws.grad).max())
        '''),
        md(r'''
        **Exercise 3 (predict the counts).** For a 7x7 image, a 3x3 kernel, stride 2 and padding 1,
        predict how many windows contain each pixel, then compute `col2im(im2col(ones))` and compare.
        Which pixels are in 4 windows, which in 2, which in 1?
        '''),
        solution(r'''
        # Solution to exercise 3
        # Windows start at padded rows 0, 2, 4, 6, i.e. they cover image rows {-1,0,1}, {1,2,3}, {3,4,5}, {5,6,7}:
        # odd rows lie in two windows, even rows in one. A pixel's count is (row count) x (column count):
        # 4 where row and column are both odd, 2 where exactly one is odd, 1 where both are even.
        ones7 = np.ones((1, 1, 7, 7))
        print(col2im(im2col(ones7, 3, stride=2, padding=1), ones7.shape, 3, stride=2, padding=1)[0, 0].astype(int))
        '''),
    ]


def notebook_03():
    return [
        md(r'''
        # 3. Batch normalisation: forward, a backward pass derived by hand, train versus eval

        Batch normalisation (Ioffe and Szegedy, 2015) rescales every channel of a layer's output to zero
        mean and unit variance over the mini-batch, then lets the network pick its own scale and shift.
        ResNets put one after every convolution. Its backward pass is the most instructive one in the
        network: every output depends on every input of its channel, and the closed-form gradient has a
        structure that also explains a classic testing mistake.

        **By the end of this notebook you will understand**

        * what batch norm computes in training mode, and over which axes;
        * how to derive its backward pass by hand, and how to check the result numerically;
        * why a gradient check with an all-ones upstream gradient is useless for batch norm (a broken
          backward pass sails through it, and fails as soon as the upstream gradient is random);
        * the difference between training and evaluation mode, and how the running statistics are
          collected (momentum, the unbiased variance).
        '''),
        setup('''
        import os
        import warnings

        import matplotlib.pyplot as plt
        import numpy as np

        import minires
        from minires import Tensor, nn
        from minires.nn import functional as F
        '''),
        md(r'''
        ## 1. The forward pass

        For a batch $x$ of shape $(N, C, H, W)$, channel $c$ has $m = N H W$ values $x_1, \dots, x_m$
        (all images, all positions). Batch norm in training mode computes, per channel,

        $$\mu = \frac1m \sum_i x_i, \qquad
          \sigma^2 = \frac1m \sum_i (x_i - \mu)^2, \qquad
          s = \frac{1}{\sqrt{\sigma^2 + \varepsilon}}, \qquad
          \hat x_i = (x_i - \mu)\, s, \qquad
          y_i = \gamma\, \hat x_i + \beta .$$

        $\hat x$ has zero mean and unit variance per channel; the learnt $\gamma$ (`weight`) and $\beta$
        (`bias`) restore whatever scale and shift suit the next layer. Note the **biased** variance
        (divide by $m$): it is the variance of exactly these numbers. Here it is in NumPy, compared with
        minires.
        '''),
        code(r'''
        def bn_forward(x, gamma, beta, eps=1e-5):
            """Training-mode batch norm of x (N, C, H, W); returns y, xhat and s = 1/sqrt(var + eps) per channel."""
            axes = (0, 2, 3)  # everything except the channel axis
            mu = x.mean(axis=axes, keepdims=True)
            var = x.var(axis=axes, keepdims=True)  # biased: divides by m
            s = 1 / np.sqrt(var + eps)
            xhat = (x - mu) * s
            return gamma.reshape(1, -1, 1, 1) * xhat + beta.reshape(1, -1, 1, 1), xhat, s


        rng = np.random.default_rng(0)
        shift, scale = np.array([3.0, -1.0, 0.0]), np.array([2.0, 0.5, 1.0])
        x = shift.reshape(1, 3, 1, 1) + scale.reshape(1, 3, 1, 1) * rng.standard_normal((16, 3, 8, 8))
        gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])

        y_np, xhat_np, s_np = bn_forward(x, gamma, beta)
        y_mr = F.batch_norm(Tensor(x), None, None, Tensor(gamma), Tensor(beta), training=True).numpy()
        print("max |NumPy - minires|:", np.abs(y_np - y_mr).max())
        print("per-channel mean of x   :", x.mean(axis=(0, 2, 3)).round(3), " std:", x.std(axis=(0, 2, 3)).round(3))
        print("per-channel mean of xhat:", xhat_np.mean(axis=(0, 2, 3)).round(12) + 0, " std:", xhat_np.std(axis=(0, 2, 3)).round(5))
        print("per-channel mean of y   :", y_np.mean(axis=(0, 2, 3)).round(6) + 0, " std:", y_np.std(axis=(0, 2, 3)).round(5))

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
        for c in range(3):
            axes[0].hist(x[:, c].ravel(), bins=60, alpha=0.6, label=f"channel {c}")
            axes[1].hist(xhat_np[:, c].ravel(), bins=60, alpha=0.6, label=f"channel {c}")
        axes[0].set_title("input x: each channel has its own mean and scale")
        axes[1].set_title(r"normalised $\hat x$: every channel has mean 0, std 1")
        axes[0].legend()
        plt.show()
        '''),
        md(r'''
        ## 2. The backward pass, derived by hand

        Write $g_i = \partial L / \partial y_i$ for the upstream gradient of one channel. The parameter
        gradients are immediate, since $y_i = \gamma \hat x_i + \beta$:

        $$\frac{\partial L}{\partial \beta} = \sum_i g_i, \qquad
          \frac{\partial L}{\partial \gamma} = \sum_i g_i\, \hat x_i .$$

        The input gradient is the interesting one: $\hat x_j$ depends on $x_i$ **directly** (if $i = j$)
        and **through the statistics** $\mu$ and $\sigma^2$, which every $x_i$ feeds. The derivatives of
        the statistics are

        $$\frac{\partial \mu}{\partial x_i} = \frac1m, \qquad
          \frac{\partial \sigma^2}{\partial x_i} = \frac2m (x_i - \mu)
          \quad\text{(the path through } \mu \text{ drops out, because } \textstyle\sum_j (x_j - \mu) = 0\text{)},$$

        so $\dfrac{\partial s}{\partial x_i} = -\tfrac12 (\sigma^2 + \varepsilon)^{-3/2}\,\dfrac2m (x_i - \mu)
        = -\dfrac{s^2}{m}\, \hat x_i$. With the product rule on $\hat x_j = (x_j - \mu)\, s$:

        $$\frac{\partial \hat x_j}{\partial x_i}
          = s\Bigl(\delta_{ij} - \frac1m\Bigr) + (x_j - \mu)\,\frac{\partial s}{\partial x_i}
          = \frac{s}{m}\bigl(m\,\delta_{ij} - 1 - \hat x_i \hat x_j\bigr).$$

        Finally the chain rule, with $\partial L / \partial \hat x_j = \gamma g_j$, sums over all $j$:

        $$\boxed{\;\frac{\partial L}{\partial x_i}
          = \sum_j \gamma g_j \frac{\partial \hat x_j}{\partial x_i}
          = \frac{\gamma s}{m}\Bigl(m\, g_i - \sum_j g_j - \hat x_i \sum_j g_j \hat x_j\Bigr)
          = \frac{\gamma s}{m}\Bigl(m\, g_i - \frac{\partial L}{\partial \beta} - \hat x_i\, \frac{\partial L}{\partial \gamma}\Bigr)\;}$$

        Read it as: take the upstream gradient, **remove its mean and its component along $\hat x$**,
        and scale by $\gamma s$. Two consequences, for every $g$ and every channel:
        $\sum_i \partial L/\partial x_i = 0$ exactly, and $\sum_i \hat x_i\, \partial L/\partial x_i \approx 0$.
        Shifting a channel of $x$ cannot change $\hat x$, and neither can scaling it (up to the small
        $\varepsilon$ under the square root, which is why the second sum is
        $\gamma s \frac{\partial L}{\partial \gamma} \frac{\varepsilon}{\sigma^2 + \varepsilon}$ rather than
        exactly zero), so the gradient has no component in those directions. Computing the two sums once and then the elementwise formula costs two passes over
        the data, which is what `minires/kernels/batch_norm.py` does.
        '''),
        code(r'''
        def bn_backward(g, xhat, s, gamma):
            """Closed-form gradient of training-mode batch norm; g, xhat (N, C, H, W), s (1, C, 1, 1), gamma (C,)."""
            axes = (0, 2, 3)
            m = g.size // g.shape[1]
            dbeta = g.sum(axis=axes)
            dgamma = (g * xhat).sum(axis=axes)
            per_channel = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731 (broadcast a (C,) vector over N, H, W)
            dx = per_channel(gamma) * s / m * (m * g - per_channel(dbeta) - xhat * per_channel(dgamma))
            return dx, dgamma, dbeta


        # A small float64 problem, so that finite differences are cheap and exact enough.
        rng = np.random.default_rng(1)
        xs = rng.standard_normal((4, 3, 2, 2)) * 2 + 1
        gs = rng.standard_normal(xs.shape)  # a RANDOM upstream gradient
        gam, bet = rng.standard_normal(3), rng.standard_normal(3)

        _, xhat_s, s_s = bn_forward(xs, gam, bet)
        dx_hand, dgamma_hand, dbeta_hand = bn_backward(gs, xhat_s, s_s, gam)

        # minires: autograd through F.batch_norm (its backward is the same closed form, in kernels/batch_norm.py)
        xt, gt, bt = (Tensor(a, requires_grad=True) for a in (xs, gam, bet))
        F.batch_norm(xt, None, None, gt, bt, training=True).backward(gs)

        # Finite differences of <batch_norm(x), g> with respect to x
        bn_of_x = lambda t: F.batch_norm(t, None, None, Tensor(gam), Tensor(bet), training=True)  # noqa: E731
        dx_numeric = minires.numerical_gradient(bn_of_x, [Tensor(xs.copy())], 0, gs)

        print("max |dx by hand - minires|      :", np.abs(dx_hand - xt.grad).max())
        print("max |dx by hand - finite diff.| :", np.abs(dx_hand - dx_numeric).max())
        print("max |dgamma, dbeta by hand - minires|:",
              max(np.abs(dgamma_hand - gt.grad).max(), np.abs(dbeta_hand - bt.grad).max()))
        print("sum of dx per channel       :", dx_hand.sum(axis=(0, 2, 3)))
        print("sum of dx * xhat per channel:", (dx_hand * xhat_s).sum(axis=(0, 2, 3)))
        '''),
        md(r'''
        The closed form agrees with minires and with finite differences to rounding error, and both sums
        vanish. We could also have let autograd differentiate a batch norm **built from primitive
        operations** (mean, subtract, multiply, square root, divide). The result is the same, but the
        graph then has about ten nodes, each storing a full-size intermediate array for its backward
        pass; the hand-derived formula stores only $x$ and two numbers per channel.
        '''),
        code(r'''
        def bn_from_primitives(x, gamma, beta, eps=1e-5):
            """Batch norm out of minires's elementary operations: autograd derives the backward pass."""
            mu = x.mean(axis=(0, 2, 3), keepdims=True)
            centred = x - mu
            var = (centred * centred).mean(axis=(0, 2, 3), keepdims=True)
            return gamma.reshape(1, 3, 1, 1) * centred / (var + eps).sqrt() + beta.reshape(1, 3, 1, 1)


        xp_ = Tensor(xs, requires_grad=True)
        bn_from_primitives(xp_, Tensor(gam), Tensor(bet)).backward(gs)
        print("max |autograd of primitives - closed form|:", np.abs(xp_.grad - dx_hand).max())

        try:
            import torch
        except ImportError:
            torch = None
            print("(PyTorch not installed: skipping the optional cross-check)")
        if torch is not None:
            tx = torch.tensor(xs, requires_grad=True)
            ty = torch.nn.functional.batch_norm(tx, None, None, torch.tensor(gam), torch.tensor(bet), training=True)
            ty.backward(torch.tensor(gs))
            print("max |torch - closed form|:", np.abs(tx.grad.numpy() - dx_hand).max())
        '''),
        md(r'''
        ## 3. Why an all-ones upstream gradient proves nothing here

        It is tempting to test a backward pass with `y.sum().backward()`, i.e. with $g_i = 1$ for every
        element. For batch norm that test is **vacuous**: per channel,
        $\sum_i y_i = \gamma \sum_i \hat x_i + m\beta = m\beta$, whatever $x$ is. The function being
        differentiated is constant in $x$, so its true gradient is zero, and the finite differences say
        zero too. Any backward pass that happens to return zero for $g = 1$ passes.

        A realistic bug of exactly that kind: forgetting the last term of the boxed formula,
        $-\hat x_i\, \partial L/\partial \gamma$. For $g = 1$ the remaining part,
        $m\,g_i - \sum_j g_j$, is zero, so the bug is invisible. Below, three backward passes for a
        2-D input $(m, C)$ (the same mathematics with the channel in the second axis) are checked against
        finite differences, first with $g = 1$, then with a random $g$.
        '''),
        code(r'''
        class BatchNormManual(minires.Function):
            """Training-mode batch norm of an (m, C) array with gamma, beta (C,); the correct closed-form backward."""

            @staticmethod
            def forward(ctx, x, gamma, beta):
                s = 1 / np.sqrt(x.var(axis=0) + 1e-5)
                xhat = (x - x.mean(axis=0)) * s
                ctx.save_for_backward(xhat, s, gamma)
                return gamma * xhat + beta

            @staticmethod
            def backward(ctx, grad):
                xhat, s, gamma = ctx.saved_tensors
                m = grad.shape[0]
                dbeta, dgamma = grad.sum(axis=0), (grad * xhat).sum(axis=0)
                return gamma * s / m * (m * grad - dbeta - xhat * dgamma), dgamma, dbeta


        class BatchNormForgetsTerm(BatchNormManual):
            @staticmethod
            def backward(ctx, grad):
                xhat, s, gamma = ctx.saved_tensors
                m = grad.shape[0]
                dbeta, dgamma = grad.sum(axis=0), (grad * xhat).sum(axis=0)
                return gamma * s / m * (m * grad - dbeta), dgamma, dbeta  # BUG: "- xhat * dgamma" is missing


        class BatchNormReturnsZero(BatchNormManual):
            @staticmethod
            def backward(ctx, grad):
                xhat, s, gamma = ctx.saved_tensors
                return np.zeros_like(grad), (grad * xhat).sum(axis=0), grad.sum(axis=0)  # BUG: no input gradient at all


        rng = np.random.default_rng(2)
        x2 = rng.standard_normal((8, 3)) * 3 + 1
        gamma2, beta2 = Tensor(rng.standard_normal(3)), Tensor(rng.standard_normal(3))


        def input_grad_error(cls, g):
            """max |backward seeded with g - central differences of <f(x), g>| for the input x."""
            xt = Tensor(x2.copy(), requires_grad=True)
            f = lambda t: cls.apply(t, gamma2, beta2)  # noqa: E731
            f(xt).backward(g)
            return np.abs(xt.grad - minires.numerical_gradient(f, [xt], 0, g)).max()


        g_ones, g_random = np.ones((8, 3)), rng.standard_normal((8, 3))
        print(f"{'backward pass':<22} {'error with g = 1':>17} {'error with random g':>20}")
        for cls in (BatchNormManual, BatchNormForgetsTerm, BatchNormReturnsZero):
            print(f"{cls.__name__:<22} {input_grad_error(cls, g_ones):>17.1e} {input_grad_error(cls, g_random):>20.1e}")
        '''),
        md(r'''
        With $g = 1$ all three look perfect; with a random $g$ the two broken ones are off by order one.
        `minires.gradcheck` always draws a random $g$, so it catches the bug:
        '''),
        code(r'''
        x2t = Tensor(x2.copy(), requires_grad=True)
        try:
            minires.gradcheck(lambda t: BatchNormForgetsTerm.apply(t, gamma2, beta2), [x2t], seed=0)
        except minires.GradcheckError as err:
            print("gradcheck:", err)
        print("and the correct one:", minires.gradcheck(lambda t: BatchNormManual.apply(t, gamma2, beta2), [x2t], seed=0))
        '''),
        md(r'''
        The same trap exists for softmax (each row sums to 1, so an all-ones check of a softmax layer is
        just as blind). The rule: **always seed gradient checks with a random upstream gradient.**

        ## 4. Training mode versus evaluation mode

        In training mode the statistics come from the current batch, so an example's output depends on
        which other examples share its batch. That is fine for learning (it even acts as a mild
        regulariser), but a trained model must give one answer per image. So `BatchNorm2d` also keeps
        **running averages** of the batch statistics, updated by every training-mode forward pass:

        $$\text{running} \leftarrow (1 - \text{momentum})\,\text{running} + \text{momentum}\cdot\text{batch statistic},
          \qquad \text{momentum} = 0.1 \text{ (PyTorch's convention)},$$

        and in evaluation mode (`model.eval()`) it normalises with those instead. One detail: the running
        **variance** uses the *unbiased* batch variance (divide by $m - 1$), because it estimates the
        variance of the data distribution, not of the batch. We feed a `BatchNorm2d` batches from a fixed
        distribution and watch the running statistics converge:
        '''),
        code(r'''
        bn = nn.BatchNorm2d(3)
        true_mean, true_std = np.array([2.0, -1.0, 0.5]), np.array([3.0, 0.5, 1.0])
        rng = np.random.default_rng(3)


        def sample_batch(n=16):
            noise = rng.standard_normal((n, 3, 4, 4))
            return Tensor((true_mean.reshape(1, 3, 1, 1) + true_std.reshape(1, 3, 1, 1) * noise).astype(np.float32))


        # One step, checked by hand: running_var moves towards the UNBIASED batch variance.
        first = sample_batch()
        bn(first)
        unbiased = first.numpy().var(axis=(0, 2, 3), ddof=1)
        print("running_var after one step:", bn.running_var, " 0.9 * 1 + 0.1 * unbiased:", 0.9 + 0.1 * unbiased)

        steps = 40 if QUICK else 100
        means, variances = [bn.running_mean.copy()], [bn.running_var.copy()]
        for _ in range(steps - 1):
            bn(sample_batch())
            means.append(bn.running_mean.copy())
            variances.append(bn.running_var.copy())
        means, variances = np.array(means), np.array(variances)

        t = np.arange(1, steps + 1)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        for c in range(3):
            axes[0].plot(t, means[:, c], color=f"C{c}", label=f"channel {c}")
            axes[0].plot(t, true_mean[c] * (1 - 0.9**t), ":", color=f"C{c}")
            axes[0].axhline(true_mean[c], color=f"C{c}", ls="--", lw=0.8)
            axes[1].plot(t, variances[:, c], color=f"C{c}", label=f"channel {c}")
            axes[1].axhline(true_std[c] ** 2, color=f"C{c}", ls="--", lw=0.8)
        axes[0].set_title(r"running_mean (dotted: $\mu\,(1 - 0.9^t)$, dashed: true mean)")
        axes[1].set_title("running_var (dashed: true variance)")
        for ax in axes:
            ax.set_xlabel("training steps")
            ax.legend(fontsize="small")
        plt.show()
        '''),
        md(r'''
        The running mean approaches the true mean like $1 - 0.9^t$: after 20 steps it has covered 88% of
        the way, after 44 steps 99%. The running variance is noisier (each batch's variance is itself an
        estimate) but settles around the true variance.

        Now the point of having two modes. The same image is placed in two different batches: in training
        mode its output differs between the two, in evaluation mode it does not.
        '''),
        code(r'''
        probe = sample_batch(1)
        batch_a = Tensor(np.concatenate([probe.numpy(), sample_batch(7).numpy()]))
        batch_b = Tensor(np.concatenate([probe.numpy(), sample_batch(7).numpy()]))

        bn.train()  # (each training-mode call also nudges the running statistics)
        diff_train = np.abs(bn(batch_a).numpy()[0] - bn(batch_b).numpy()[0]).max()
        bn.eval()
        diff_eval = np.abs(bn(batch_a).numpy()[0] - bn(batch_b).numpy()[0]).max()
        print(f"same image, two batches: max output difference in train mode {diff_train:.3f}, in eval mode {diff_eval:.3f}")

        # A classic mistake: evaluating a network whose running statistics were never trained.
        fresh = nn.BatchNorm2d(3).eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fresh(probe)
        print("\nwarning from a fresh BatchNorm2d in eval mode:\n ", caught[0].message)
        '''),
        md(r'''
        ## Summary

        * Batch norm normalises each channel over the batch and spatial axes, then applies a learnt
          $\gamma$ and $\beta$.
        * Its input gradient is the upstream gradient with its mean and its component along $\hat x$
          removed, scaled by $\gamma s$; it sums to zero per channel.
        * Because $\sum_i y_i = m\beta$ for any input, an all-ones gradient check cannot see mistakes:
          check with a random upstream gradient.
        * Training mode uses batch statistics and updates running averages (unbiased variance, momentum
          0.1); evaluation mode uses the running averages, so each output depends only on its own input.

        ## Exercises

        **Exercise 1.** Use minires (not the NumPy formula) to compute the input gradient of
        `F.batch_norm` in training mode for a random $(8, 3, 4, 4)$ input and a random upstream gradient.
        Check that per channel $\sum_i \partial L/\partial x_i = 0$ and
        $\sum_i \hat x_i\, \partial L/\partial x_i \approx 0$. Why does the second identity hold, and why
        only approximately? Check your explanation by setting `eps=0`.
        '''),
        solution(r'''
        # Solution to exercise 1
        # Adding a constant to a channel changes nothing after normalisation: the gradient sums to zero.
        # Adding a * xhat to x (small a) rescales each channel about its mean, and normalisation undoes a
        # rescaling, so the loss cannot change along xhat: the gradient is orthogonal to xhat. With eps > 0
        # the normalisation does not undo a rescaling completely (x / sqrt(var + eps) still depends a
        # little on the scale), hence the small remainder, which vanishes for eps = 0.
        rng = np.random.default_rng(4)
        x_data, upstream = rng.standard_normal((8, 3, 4, 4)) * 2 - 1, rng.standard_normal((8, 3, 4, 4))
        for eps in (1e-5, 0.0):
            xe = Tensor(x_data, requires_grad=True)
            F.batch_norm(xe, None, None, training=True, eps=eps).backward(upstream)
            xhat_e = (x_data - x_data.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
                x_data.var(axis=(0, 2, 3), keepdims=True) + eps)
            print(f"eps = {eps}: sum of dx per channel {xe.grad.sum(axis=(0, 2, 3))}, "
                  f"sum of dx * xhat {(xe.grad * xhat_e).sum(axis=(0, 2, 3))}")
        '''),
        md(r'''
        **Exercise 2.** Derive the backward pass of batch norm in **evaluation** mode (the statistics are
        now constants), then verify it against `F.batch_norm(..., training=False)` and run `gradcheck` on
        the input, $\gamma$ and $\beta$.
        '''),
        solution(r'''
        # Solution to exercise 2
        # y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta is affine per channel, so
        # dx = gamma * g / sqrt(running_var + eps); dgamma and dbeta have the same formulas as in training.
        rng = np.random.default_rng(5)
        rmean, rvar = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
        xe, ge = Tensor(rng.standard_normal((4, 3, 2, 2)), requires_grad=True), Tensor(rng.standard_normal(3), requires_grad=True)
        be = Tensor(rng.standard_normal(3), requires_grad=True)
        up = rng.standard_normal(xe.shape)
        F.batch_norm(xe, rmean, rvar, ge, be, training=False).backward(up)
        by_hand = ge.data.reshape(1, 3, 1, 1) * up / np.sqrt(rvar.reshape(1, 3, 1, 1) + 1e-5)
        print("max |dx by hand - minires|:", np.abs(by_hand - xe.grad).max())
        print("gradcheck:", minires.gradcheck(lambda a, g_, b_: F.batch_norm(a, rmean, rvar, g_, b_, training=False),
                                              [xe, ge, be], seed=0))
        '''),
        md(r'''
        **Exercise 3.** A `BatchNorm1d` starts with `running_mean = 0` and sees batches whose mean is
        exactly $\mu$ every time. Show that after $t$ steps `running_mean` $= \mu\,(1 - 0.9^t)$, find how
        many steps it takes to get within 1% of $\mu$, and check both with minires.
        '''),
        solution(r'''
        # Solution to exercise 3
        # r_t = 0.9 r_{t-1} + 0.1 mu with r_0 = 0 gives r_t = mu (1 - 0.9^t) (geometric series).
        # Within 1%: 0.9^t <= 0.01, t >= log(0.01) / log(0.9) = 43.7, so 44 steps.
        mu_e = 5.0
        bn1 = nn.BatchNorm1d(1)
        rng = np.random.default_rng(6)
        for step in range(1, 45):
            noise = rng.standard_normal((32, 1))
            bn1(Tensor((mu_e + noise - noise.mean()).astype(np.float32)))  # batch mean exactly mu_e
            if step in (1, 10, 43, 44):
                print(f"t = {step:2d}: running_mean {bn1.running_mean[0]:.4f}, formula {mu_e * (1 - 0.9**step):.4f}")
        print("steps needed:", int(np.ceil(np.log(0.01) / np.log(0.9))))
        '''),
    ]


def notebook_04():
    return [
        md(r'''
        # 4. Residual and bottleneck blocks

        A ResNet is a stack of **blocks**. Each block computes a *residual* $F(x)$ with two or three
        convolutions and adds its input back: $y = \operatorname{relu}(F(x) + x)$. This notebook builds
        the blocks of He et al. (2016) from minires's model code, compares them with their *plain* twins
        (the same layers without the addition), and counts what they cost.

        **By the end of this notebook you will understand**

        * the basic block and the bottleneck block, and how a plain twin differs (only by the addition);
        * the three shortcut options A, B and C for blocks that change the shape, and what each costs;
        * how to count parameters and multiply-accumulates (MACs) of a layer, and why the bottleneck
          design is cheap;
        * the layout of the CIFAR-10 ResNets (depth $6n + 2$), as `minires.summary` prints it.
        '''),
        setup('''
        import os

        import matplotlib.pyplot as plt
        import numpy as np

        import minires
        from minires import Tensor, models, nn
        from minires.models import BasicBlock, Bottleneck, PlainBlock, PlainBottleneck
        from minires.summary import summary
        '''),
        md(r'''
        ## 1. The basic block

        Two 3x3 convolutions, each followed by batch norm, a ReLU in between, and the input added before
        the final ReLU:

        $$F(x) = \mathrm{BN}_2\bigl(\mathrm{conv}_2(\operatorname{relu}(\mathrm{BN}_1(\mathrm{conv}_1(x))))\bigr),
          \qquad y = \operatorname{relu}\bigl(F(x) + s(x)\bigr),$$

        where the shortcut $s$ is the identity whenever $F$ keeps the shape. The convolutions have no
        bias: the batch norm right after each one subtracts the channel mean, which would cancel any bias.
        '''),
        code(r'''
        nn.init.manual_seed(0)  # standalone layers draw their initial weights from minires.nn.init's generator
        block = BasicBlock(16, 16)
        print(block)
        x = Tensor(np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32))
        print("\ninput", x.shape, "-> output", block(x).shape)
        '''),
        md(r'''
        Blocks have **taps**: at fixed points of their forward pass they report the tensors they compute
        (`"input"`, `"residual"` $= F(x)$, `"shortcut"` $= s(x)$, `"output"`) to any function registered
        with `add_tap`. The diagnostics of notebook 5 are built on them; here we use one to confirm that
        the output really is $\operatorname{relu}(F(x) + x)$.
        '''),
        code(r'''
        seen = {}
        handle = block.add_tap(lambda blk, name, tensor: seen.__setitem__(name, tensor.numpy().copy()))
        y = block(x).numpy()
        handle.remove()  # taps cost nothing once removed
        print("taps reported:", list(seen))
        print("max |y - relu(F(x) + x)|:", np.abs(y - np.maximum(seen["residual"] + x.numpy(), 0)).max())
        '''),
        md(r'''
        ## 2. The plain twin

        `PlainBlock` has exactly the layers of `BasicBlock` and computes $y = \operatorname{relu}(F(x))$.
        Same parameters, same names, same initialisation: the only difference is the addition. That is
        what makes the paper's plain-versus-residual comparison a controlled experiment.
        '''),
        code(r'''
        def parameter_table(module):
            return [(name, tuple(p.shape)) for name, p in module.named_parameters()]


        nn.init.manual_seed(0)
        twin = PlainBlock(16, 16)
        print("same parameter names and shapes:", parameter_table(twin) == parameter_table(block))
        print("same initial weights:", all(np.array_equal(a.data, b.data) for a, b in zip(twin.parameters(), block.parameters())))
        y_plain = twin(x).numpy()
        print("outputs differ by the shortcut: max |residual - plain| =", float(np.abs(y - y_plain).max()))
        '''),
        md(r'''
        ## 3. Shortcuts when the shape changes: options A, B and C

        The first block of each stage halves the height and width (stride 2 in its first convolution) and
        doubles the channels, so $x$ no longer has the shape of $F(x)$. The paper compares three fixes:

        * **option A**: keep the shortcut parameter-free. Subsample the grid (`x[:, :, ::2, ::2]`) and
          append zero channels. The paper's CIFAR networks use it, so a ResNet has exactly as many
          parameters as its plain twin. minires pads the new channels evenly on both sides, as common
          PyTorch reproductions do.
        * **option B**: a 1x1 convolution with stride 2, followed by batch norm (a *projection*), only
          where the shape changes; identity elsewhere. torchvision's ImageNet models use it.
        * **option C**: a projection on *every* shortcut, even where the identity would do.
        '''),
        code(r'''
        def count(module):
            return sum(p.size for p in module.parameters())


        print(f"{'':>6} {'16 -> 32 channels, stride 2':^36} | {'32 -> 32 channels, stride 1':^36}")
        print(f"{'option':>6} {'shortcut':>18} {'params':>8} {'(block)':>8} | {'shortcut':>18} {'params':>8} {'(block)':>8}")
        for option in "ABC":
            down, same = BasicBlock(16, 32, stride=2, shortcut=option), BasicBlock(32, 32, shortcut=option)
            print(f"{option:>6} " + " | ".join(
                f"{type(b.shortcut).__name__:>18} {count(b.shortcut):>8,} {count(b):>8,}" for b in (down, same)))
        print(f"{'plain':>6} {'-':>18} {0:>8} {count(PlainBlock(16, 32, stride=2)):>8,} | "
              f"{'-':>18} {0:>8} {count(PlainBlock(32, 32)):>8,}")
        '''),
        md(r'''
        B and C differ only on blocks that keep the shape, where C still projects. What option A does to
        a tensor: below, channel $c$ of the input holds the constant $c + 1$ and
        the spatial grid holds $0, 1, 2, \dots$ (times a small factor) so that the subsampling is visible.
        '''),
        code(r'''
        shortcut_a = BasicBlock(16, 32, stride=2, shortcut="A").shortcut
        grid = np.arange(64, dtype=np.float32).reshape(8, 8) / 1000
        xa = Tensor((np.arange(1, 17, dtype=np.float32).reshape(1, 16, 1, 1) + grid).astype(np.float32))
        sa = shortcut_a(xa).numpy()
        print("input", xa.shape, "-> shortcut", sa.shape)
        print("channel 8 of the shortcut (= input channel 0, every second row and column), times 1000:")
        print(np.round((sa[0, 8] - 1) * 1000).astype(int))

        fig, ax = plt.subplots(figsize=(9, 2.6))
        ax.bar(range(32), sa[0].mean(axis=(1, 2)), color=["0.7" if v == 0 else "C0" for v in sa[0].mean(axis=(1, 2))])
        ax.set_xlabel("output channel of the option-A shortcut")
        ax.set_ylabel("mean value")
        ax.set_title("Option A: the 16 input channels in the middle, 8 zero channels on each side")
        plt.show()
        '''),
        md(r'''
        Over a whole network the choice adds up. ResNet-20 has only two shape-changing blocks, so option
        B adds little; option C puts a projection into all nine blocks:
        '''),
        code(r'''
        for option in "ABC":
            net = models.resnet20(shortcut=option, seed=0)
            print(f"resnet20, option {option}: {count(net):>7,} parameters")
        print(f"plain20            : {count(models.plain20(seed=0)):>7,} parameters")
        '''),
        md(r'''
        ## 4. The bottleneck block, and why it is cheap

        Deeper ImageNet ResNets (50, 101, 152 layers) replace the two 3x3 convolutions by three layers:
        a 1x1 convolution that **reduces** the width ($C \to C/4$), a 3x3 convolution on the narrow
        representation, and a 1x1 convolution that **restores** the width ($C/4 \to C$), each with batch
        norm. The expensive 3x3 only ever sees a quarter of the channels.

        **Counting.** A convolution with $C_{in}$ input and $C_{out}$ output channels and a $k \times k$
        kernel has $C_{out} C_{in} k^2$ weights, and performs one multiply-accumulate per weight per output
        position: $\text{MACs} = C_{out} C_{in} k^2 H_{out} W_{out}$. Batch norm, ReLU and the addition are
        negligible in comparison and are not counted (the paper's "FLOPs" are these MACs).
        `minires.summary` measures the output shapes with one forward pass and applies this formula.

        The comparison below is the paper's (its figure 5), on 56x56 maps: the basic block of ResNet-34's
        first stage (64 channels), the bottleneck of ResNet-50's first stage (256 channels in and out,
        64 inside), what two 3x3 convolutions would cost at 256 channels, and the same bottleneck with a
        projection (option C) on its shortcut.
        '''),
        code(r'''
        nn.init.manual_seed(0)
        candidates = {
            "basic, 64 ch": (BasicBlock(64, 64), (64, 56, 56)),
            "bottleneck, 256 ch (64 inside)": (Bottleneck(256, 64), (256, 56, 56)),
            "basic, 256 ch": (BasicBlock(256, 256), (256, 56, 56)),
            "bottleneck + projection (C)": (Bottleneck(256, 64, shortcut="C"), (256, 56, 56)),
        }
        costs = {}
        print(f"{'block':<32} {'params':>10} {'MACs (56x56)':>14}")
        for label, (blk, shape) in candidates.items():
            s = summary(blk, shape)
            costs[label] = (s.total_params, s.total_macs)
            print(f"{label:<32} {s.total_params:>10,} {s.total_macs / 1e6:>12.0f} M")

        print("\nper-layer view of the bottleneck:")
        print(summary(candidates["bottleneck, 256 ch (64 inside)"][0], (256, 56, 56)))

        fig, axes = plt.subplots(1, 2, figsize=(11, 2.8), sharey=True)
        labels = list(costs)
        for ax, k, title, unit, scale in [(axes[0], 0, "parameters", "k", 1e3), (axes[1], 1, "MACs per image (56x56 maps)", "M", 1e6)]:
            values = [costs[lab][k] / scale for lab in labels]
            ax.barh(labels, values, color=["C0", "C2", "C3", "C1"])
            for row, v in enumerate(values):
                ax.text(v, row, f" {v:,.0f}{unit}", va="center")
            ax.set_xlim(0, max(values) * 1.25)
            ax.set_title(title)
        axes[0].invert_yaxis()
        plt.show()
        '''),
        md(r'''
        The bottleneck processes a representation **four times wider** than the 64-channel basic block at
        about the same cost, and costs about 17 times less than two 3x3 convolutions at that width. It
        also shows why identity shortcuts matter most here: a projection between the two wide ends is a
        $256 \times 256$ 1x1 convolution, which almost doubles the block's parameters and compute.

        `PlainBottleneck` is its plain twin, as before: the same three layers and names, seeded the same,
        without the addition. The check of section 2 again, for the bottleneck (the taps of a residual
        block report its branch $F(x)$, so the plain twin's output must be exactly
        $\operatorname{relu}(F(x))$ and the residual block's $\operatorname{relu}(F(x) + x)$):
        '''),
        code(r'''
        nn.init.manual_seed(0)
        bottleneck = Bottleneck(64, 16)  # 64 -> 16 -> 16 -> 64 channels
        nn.init.manual_seed(0)
        plain_bottleneck = PlainBottleneck(64, 16)
        print("same parameter names and shapes:", parameter_table(plain_bottleneck) == parameter_table(bottleneck))
        print("same initial weights:", all(np.array_equal(a.data, b.data)
                                           for a, b in zip(plain_bottleneck.parameters(), bottleneck.parameters())))
        xb = Tensor(np.random.default_rng(1).standard_normal((2, 64, 8, 8)).astype(np.float32))
        branch = {}
        handle = bottleneck.add_tap(lambda blk, name, tensor: branch.__setitem__(name, tensor.numpy().copy()))
        y_res = bottleneck(xb).numpy()
        handle.remove()
        y_plain = plain_bottleneck(xb).numpy()
        print("max |plain - relu(F(x))|     :", float(np.abs(y_plain - np.maximum(branch["residual"], 0)).max()))
        print("max |residual - relu(F(x)+x)|:", float(np.abs(y_res - np.maximum(branch["residual"] + xb.numpy(), 0)).max()))
        '''),
        md(r'''
        ## 5. The CIFAR-10 ResNets

        For CIFAR-10 (32x32 images) the paper uses a compact family (section 4.2): a 3x3 convolution with
        16 filters, then three stages of $n$ basic blocks ($2n$ layers each) with 16, 32 and 64 filters on
        32x32, 16x16 and 8x8 maps, then global average pooling and a 10-way fully connected layer.
        Counting the layers with weights: $1 + 3 \cdot 2n + 1 = 6n + 2$. $n = 3, 5, 7, 9, 18$ gives
        ResNet-20, 32, 44, 56 and 110. Here is ResNet-20, layer by layer:
        '''),
        code(r'''
        net = models.resnet20(seed=0)
        s20 = summary(net, (3, 32, 32))
        print(s20)
        '''),
        code(r'''
        convs = [layer for layer in s20.layers if layer.type in ("Conv2d", "Linear")]
        fig, ax1 = plt.subplots(figsize=(10, 3.2))
        depth = np.arange(1, len(convs) + 1)
        ax1.step(depth, [layer.output_shape[1] for layer in convs], where="mid", color="C0", label="channels")
        ax1.set_ylabel("output channels", color="C0")
        ax2 = ax1.twinx()
        sizes = [layer.output_shape[2] if len(layer.output_shape) == 4 else 1 for layer in convs]
        ax2.step(depth, sizes, where="mid", color="C3", label="height = width")
        ax2.set_ylabel("map size (H = W)", color="C3")
        ax1.set_xlabel("weighted layer (1 = first conv, 20 = fc)")
        ax1.set_title("ResNet-20: every stage halves the map and doubles the channels")
        plt.show()
        '''),
        md(r'''
        The paper lists the parameter counts of this family in its table 6; the MAC counts are the values
        usually quoted for these models. The ImageNet models can be compared with torchvision's parameter
        counts, since minires builds them with the same layers:
        '''),
        code(r'''
        paper = {20: (0.27, 40.55), 32: (0.46, None), 44: (0.66, None), 56: (0.85, 125.5), 110: (1.7, 252.9)}
        print(f"{'model':<10} {'params':>10} {'MACs/image':>12} {'paper params':>13} {'quoted MACs':>11}")
        for depth, (p_params, p_macs) in paper.items():
            s = summary(models.create(f"resnet{depth}", seed=0), (3, 32, 32))
            macs = f"{p_macs:.2f} M" if p_macs else "-"
            print(f"resnet{depth:<4} {s.total_params:>10,} {s.total_macs / 1e6:>10.2f} M {p_params:>11.2f} M {macs:>11}")

        torchvision = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
        print()
        for name, expected in torchvision.items():
            n_params = count(models.create(name, seed=0))
            print(f"{name:<9} {n_params:>11,} parameters (torchvision: {expected:,}) {'same' if n_params == expected else 'DIFFERENT'}")
        '''),
        md(r'''
        ## Summary

        * A residual block computes $\operatorname{relu}(F(x) + s(x))$; its plain twin has the same layers
          and computes $\operatorname{relu}(F(x))$.
        * When a block changes the shape, the shortcut is either parameter-free (A: subsample and pad with
          zero channels) or a strided 1x1 projection with batch norm (B: only there; C: everywhere).
        * A convolution costs $C_{out} C_{in} k^2$ parameters and that many MACs per output position. The
          bottleneck puts its 3x3 on a quarter of the width, so it can afford wide representations.
        * CIFAR ResNets have $6n + 2$ layers in three stages (16, 32, 64 channels); ResNet-20 has 0.27 M
          parameters and costs 40.55 M MACs per image.

        ## Exercises

        **Exercise 1.** Count by hand the parameters of `BasicBlock(32, 64, stride=2, shortcut="B")`
        (remember that each batch norm has a $\gamma$ and a $\beta$ per channel) and check with minires.
        '''),
        solution(r'''
        # Solution to exercise 1
        # conv1 3x3, 32 -> 64: 9 * 32 * 64 = 18,432;  bn1: 2 * 64 = 128
        # conv2 3x3, 64 -> 64: 9 * 64 * 64 = 36,864;  bn2: 128
        # shortcut (option B): 1x1 conv 32 -> 64: 2,048; its bn: 128
        by_hand = 18_432 + 128 + 36_864 + 128 + 2_048 + 128
        blk = BasicBlock(32, 64, stride=2, shortcut="B")
        print(f"by hand {by_hand:,}, minires {count(blk):,}")
        for name, p in blk.named_parameters():
            print(f"  {name:<22} {str(tuple(p.shape)):<16} {p.size:>7,}")
        '''),
        md(r'''
        **Exercise 2.** `models.resnet20(zero_init_residual=True)` sets $\gamma = 0$ in the last batch norm
        of every residual branch (Goyal et al., 2017). What does each block compute at initialisation?
        Verify it with taps on every block (`model.blocks()` yields `(name, block)` pairs).
        '''),
        solution(r'''
        # Solution to exercise 2
        # With gamma = 0 (and beta = 0) the branch outputs F(x) = 0, so y = relu(s(x)). The input of every
        # block is the output of a ReLU (non-negative), so an identity-shortcut block returns its input
        # unchanged, and an option-A block returns the subsampled, zero-padded input: each block starts as
        # its shortcut, and the network starts as a shallow one (stem, pooling, fc).
        model = models.resnet20(zero_init_residual=True, seed=0)
        records = {}
        for name, blk in model.blocks():
            blk.add_tap(lambda b, tap, t, name=name: records.setdefault(name, {}).__setitem__(tap, t.numpy().copy()))
        model.train()
        model(Tensor(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)))
        for name, r in records.items():
            print(f"{name}: max|F(x)| = {np.abs(r['residual']).max():.1e}, max|y - s(x)| = {np.abs(r['output'] - r['shortcut']).max():.1e}")
        '''),
        md(r'''
        **Exercise 3.** Show that `plain20` and `resnet20` have exactly the same parameter count and the
        same `state_dict` keys (so the same weights can be loaded into both), and that this stops being
        true with option-B shortcuts.
        '''),
        solution(r'''
        # Solution to exercise 3
        plain, resnet_a, resnet_b = models.plain20(seed=0), models.resnet20(seed=0), models.resnet20(shortcut="B", seed=0)
        print("parameters: plain20", f"{count(plain):,}", "| resnet20 (A)", f"{count(resnet_a):,}", "| resnet20 (B)", f"{count(resnet_b):,}")
        print("same state_dict keys, plain20 vs resnet20 (A):", list(plain.state_dict()) == list(resnet_a.state_dict()))
        extra = sorted(set(resnet_b.state_dict()) - set(plain.state_dict()))
        print("keys only in resnet20 (B):", extra)
        '''),
    ]


def notebook_05():
    return [
        md(r'''
        # 5. Gradient flow: plain versus residual networks

        The ResNet paper starts from an observation: a deeper plain network (conv, BN, ReLU, repeated)
        ends up with a *higher training error* than a shallower one. The deeper network could represent
        everything the shallower one can, so the problem is optimisation: gradient descent struggles to
        train it. This notebook looks at the quantity gradient descent depends on, the gradient reaching
        every layer, and measures it in plain and residual networks of several depths.

        **By the end of this notebook you will understand**

        * why the gradient reaching an early layer of a plain network is a *product* of one factor per
          later layer, and why such products explode or vanish with depth;
        * how the identity shortcut turns that product into something that grows only slowly with depth;
        * how to measure per-layer and per-block gradient norms with `minires.diagnostics`
          (`GradientMonitor`, built on block taps and `Tensor.register_hook`);
        * what plain and residual networks look like at initialisation across depths, with and without
          batch norm, and what happens to the exploding gradient of a plain network once training starts.
        '''),
        setup('''
        import os
        import tempfile
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        from IPython.display import Image, display

        import minires
        from minires import Tensor, models, nn
        from minires.data import DataLoader, load_cifar10, resolve_data_dir, standard_augment
        from minires.diagnostics import plots
        from minires.diagnostics.compare import format_gradflow_table, gradflow
        from minires.diagnostics.monitor import GradientMonitor
        from minires.diagnostics.sweep import depth_sweep, fixed_batch, without_batch_norm
        from minires.nn import functional as F
        from minires.optim import SGD

        FIGURES = Path(tempfile.mkdtemp(prefix="minires-gradflow-"))  # the library's plot functions write files


        def show(paths):
            """Display the PNG among the files a minires.diagnostics.plots function wrote."""
            display(Image(filename=str(next(p for p in paths if p.suffix == ".png"))))
        '''),
        md(r'''
        ## 1. Depth turns the backward pass into a product

        A network is a chain of layers $y_k = f_k(y_{k-1})$, and the loss depends on an early activation
        only through everything after it. By the chain rule,

        $$\frac{\partial L}{\partial y_0} = J_1^\top J_2^\top \cdots J_K^\top\, \frac{\partial L}{\partial y_K},
          \qquad J_k = \frac{\partial f_k}{\partial y_{k-1}} .$$

        If each factor changes the norm of the gradient by some typical gain $a$, the gradient at the
        bottom of a $K$-layer stack is about $a^K$ times the one at the top: it **vanishes** for $a < 1$
        and **explodes** for $a > 1$, exponentially in depth. Initialisation schemes (He et al., 2015) are
        designed to make $a \approx 1$, but "about one" raised to the 50th power can still be far from one.

        A residual block computes $y_k = y_{k-1} + F_k(y_{k-1})$, so its Jacobian is $I + \partial F_k/\partial y$.
        Multiplying out the product of $(I + \cdot)$ factors gives a **sum over paths**, and one of the
        paths is the identity all the way down: part of the gradient reaches every block without
        crossing a single weight.

        That alone does not prevent growth: with a branch of gain $a$, each block multiplies the norm by
        about $\sqrt{1 + a^2}$, which still compounds over many blocks. What keeps real ResNets healthy is
        batch norm inside the branch. Each branch adds a signal of roughly unit variance to the stream, so
        after $k$ blocks the stream's variance is about $k$, and the BN at the branch's input divides by
        its standard deviation $\sqrt{k}$. The branch's gain therefore falls like $1/\sqrt{k}$, and the
        product $\prod_k \sqrt{1 + c/k}$ grows only like a power of the depth, not exponentially (De and
        Smith, 2020, "Batch normalization biases residual blocks towards the identity function").

        A toy model makes the four cases concrete: random $256 \times 256$ matrices stand in for the
        Jacobians, and we follow the norm of a gradient vector as it travels down.
        '''),
        code(r'''
        def backprop_norms(depth, residual, gain, width=256, seed=0):
            """Norm of a unit gradient after passing down `depth` random layers (plain: v <- J^T v; residual: v <- v + J^T v)."""
            rng = np.random.default_rng(seed)
            v = rng.standard_normal(width)
            v /= np.linalg.norm(v)
            norms = [1.0]
            for k in range(1, depth + 1):
                a = gain(k) if callable(gain) else gain
                J = rng.standard_normal((width, width)) * a / np.sqrt(width)  # a random Jacobian of gain about a
                v = v + J.T @ v if residual else J.T @ v
                norms.append(np.linalg.norm(v))
            return np.array(norms)


        depth = 30 if QUICK else 60
        cases = {
            "plain, gain 0.8": (False, 0.8),
            "plain, gain 1.2": (False, 1.2),
            "residual, gain 0.8": (True, 0.8),
            "residual, gain 1/sqrt(k) (BN in the branch)": (True, lambda k: 1 / np.sqrt(k)),
        }
        fig, ax = plt.subplots(figsize=(8, 4))
        for (label, (residual, gain)), style in zip(cases.items(), ["--", "--", "-", "-"]):
            norms = backprop_norms(depth, residual, gain)
            ax.semilogy(norms, style, label=f"{label}: x{norms[-1]:.1e} after {depth} layers")
        ax.set_xlabel("layers travelled from the loss towards the input")
        ax.set_ylabel("gradient norm (log scale)")
        ax.set_title("Toy model: products of random Jacobians")
        ax.legend(fontsize="small")
        ax.grid(True, which="both", alpha=0.3)
        plt.show()
        '''),
        md(r'''
        Plain products drift geometrically in either direction; a residual stream with a fixed-gain
        branch drifts geometrically upwards; a residual stream whose branches shrink like $1/\sqrt{k}$
        stays within a small factor. Now let us measure real networks.

        ## 2. Measuring the gradient at every layer

        After `loss.backward()` each weight holds $\partial L/\partial W$, so per-layer weight-gradient
        norms are easy to read. The gradient with respect to an *activation* (what flows between blocks)
        is never stored, because activations are not leaves. `minires.diagnostics.GradientMonitor` gets it
        anyway: it registers a **tap** on every block (a callback that receives the block's input and
        output tensors during the forward pass) and, from the tap, a `register_hook` on those tensors; the
        hook receives $\partial L/\partial x$ during `backward()` and keeps its norm. Here is the idea in
        five lines, on one block:
        '''),
        code(r'''
        net = models.plain20(seed=0)
        block = net.layer2[0]
        captured = {}
        tap = block.add_tap(lambda blk, name, t: name == "input" and t.register_hook(
            lambda g: captured.__setitem__("dL/dx at layer2.0 input", float(np.linalg.norm(g.numpy())))))
        images, labels = fixed_batch(8 if QUICK else 32, 16 if QUICK else 32)
        F.cross_entropy(net(images), labels).backward()
        tap.remove()
        print(captured)
        '''),
        md(r'''
        `GradientMonitor` does this for every block and reads every weight's gradient too. `record(step)`
        stores one row per call; `format_table()` prints the latest one: for each layer
        $\|\partial L/\partial W\|$, $\|W\|$ and their ratio (plain SGD moves $W$ by
        `lr * ratio` relative to its size), then for each block the gradient norm at its input and output.
        '''),
        code(r'''
        net = models.plain20(seed=0)
        with GradientMonitor(net) as monitor:  # `with` detaches every hook at the end
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            monitor.record(0, loss=float(loss.item()))
        print(monitor.format_table())
        '''),
        md(r'''
        ## 3. Plain versus residual at initialisation

        `minires.diagnostics.compare.gradflow` runs one forward and backward pass of several freshly
        initialised models on the same batch (standard-normal images: normalised CIFAR images have the
        same scale, and no data is needed) and returns one monitor history per model. The plain and
        residual twins of a given depth start from identical convolution weights. The table lists
        $\|\partial L/\partial W\|$ layer by layer, input side first; the figure draws the same numbers.
        '''),
        code(r'''
        batch, size = (8, 16) if QUICK else (64, 32)
        images, labels = fixed_batch(batch, size)
        histories = gradflow(["plain20", "resnet20", "plain56", "resnet56"], images=images, labels=labels)
        print(f"batch of {batch} standard-normal {size}x{size} images\n")
        print(format_gradflow_table(histories))
        show(plots.plot_depth_profile(histories, FIGURES / "profile_init",
                                      title="Weight-gradient norm per layer at initialisation"))
        '''),
        code(r'''
        fig, ax = plt.subplots(figsize=(8, 3.8))
        for label, history in histories.items():
            dl_dx = history.grad_array("block_in")[0]  # ||dL/dx|| at the input of every block
            ax.semilogy(np.arange(1, len(dl_dx) + 1), dl_dx, "--" if label.startswith("plain") else "-",
                        marker=".", label=label)
        ax.set_xlabel("block (1 = nearest the input)")
        ax.set_ylabel(r"$\|\partial L / \partial x\|$ at the block input")
        ax.set_title("Gradient reaching each block at initialisation")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        plt.show()
        '''),
        md(r'''
        Read the plain networks from right (output) to left (input): the gradient **grows** at almost
        every layer on its way down, and the growth compounds. For plain-56 the first convolution receives
        a gradient hundreds to thousands of times larger than the last one. The residual twins stay within
        a small factor over the whole depth. (The last point of each curve is the fully connected layer,
        whose gradient comes straight from the softmax.)

        Why does the plain stack *explode* rather than vanish? Each conv-BN-ReLU layer's backward map has
        a gain slightly above one: batch norm divides by the batch's standard deviation and removes its
        mean, and together with the ReLU that amplifies the gradient a little on average (the mean-field
        analysis of Yang et al., 2019, "A mean field theory of batch normalization"). A few percent per
        layer, compounded over 55 layers, is orders of magnitude.

        ## 4. A depth sweep, with and without batch norm

        `depth_sweep` repeats the measurement for several depths and reports the ratio of the first to
        the last convolution's gradient norm, the spread (largest over smallest) across all convolutions,
        and the standard deviation of the logits, which exposes a blow-up of the *forward* pass. Running it
        a second time with every batch norm removed (`without_batch_norm` replaces them by identities; the
        convolution weights stay the same) separates the two effects.
        '''),
        code(r'''
        depths = [20, 32, 44, 56] if QUICK else [20, 32, 44, 56, 110]
        sweep_batch, sweep_size = (8, 16) if QUICK else (32, 32)
        with_bn = depth_sweep(depths, batch_size=sweep_batch, image_size=sweep_size)
        without_bn = depth_sweep(depths, batch_size=sweep_batch, image_size=sweep_size, batch_norm=False)
        print(with_bn.format_table())
        print()
        print(without_bn.format_table())
        show(plots.plot_depth_sweep([with_bn, without_bn], FIGURES / "depth_sweep"))
        '''),
        md(r'''
        Three regimes, matching the toy model:

        * **Plain with batch norm** (the paper's plain networks): the first/last ratio grows
          exponentially with depth. The early layers get enormous gradients relative to the late ones.
        * **Plain without batch norm**: with He initialisation the backward signal keeps its scale (the
          ratio hardly changes with depth; the first layer gets a somewhat smaller gradient than the last
          at every depth). That is what the initialisation was designed for. A slightly different scale
          would make it vanish or explode geometrically (exercise 1).
        * **Residual without batch norm**: the *forward* signal explodes (look at the logit standard
          deviation): every block adds a branch about as large as its input, so the variance roughly
          doubles per block, and every gradient grows with it. Shortcuts alone are not enough.
        * **Residual with batch norm**: the ratio stays within a small factor at every depth. The BN in
          each branch shrinks the branch relative to the growing stream, exactly the $1/\sqrt{k}$ case
          of the toy model.

        ## 5. During training

        Measurements at initialisation are a starting point; what matters is what gradient descent does
        with them. We train plain-56 and ResNet-56 for a few dozen SGD steps on CIFAR-10 (or on a
        synthetic stand-in when the data set is not available), with identical initial convolution
        weights and the identical sequence of augmented batches, and record every step with a
        `GradientMonitor`.
        '''),
        code(r'''
        def synthetic_cifar(n, seed=0):
            """A learnable stand-in for CIFAR-10 training images: each class is a smooth colour pattern plus noise."""
            rng = np.random.default_rng(seed)
            patterns = rng.uniform(0, 255, size=(10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
            labels = rng.integers(0, 10, size=n)
            noisy = 0.6 * patterns[labels] + 51 + rng.normal(0, 40, size=(n, 3, 32, 32))
            return np.clip(noisy, 0, 255).astype(np.uint8), labels.astype(np.int64)


        n_train = 256 if QUICK else 2048
        try:
            cifar = load_cifar10(resolve_data_dir(), download=False)  # $MINIRES_DATA, else ~/.cache/minires
            train_images, train_labels = cifar.train_images[:n_train], cifar.train_labels[:n_train]
            print(f"CIFAR-10 from {cifar.source}: using the first {n_train} training images")
        except minires.data.CIFARError as err:
            train_images, train_labels = synthetic_cifar(n_train)
            print("NOTE: CIFAR-10 is not available here, so this section trains on SYNTHETIC images (set "
                  "MINIRES_DATA to a directory containing cifar-10-batches-py to use the real data).\n  "
                  + str(err).split(". ")[0])
        '''),
        code(r'''
        def train_and_monitor(name, steps, batch_size, lr):
            """SGD with momentum on `name` for `steps` steps; returns the GradientMonitor history (every step)."""
            model = models.create(name, seed=0)
            model.train()
            optimizer = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
            loader = DataLoader(train_images, train_labels, batch_size=batch_size, shuffle=True, drop_last=True,
                                seed=0, augment=standard_augment)  # same seed: both models see the same batches
            monitor = GradientMonitor(model)
            step = 0
            while step < steps:
                for x, y in loader:
                    loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    step += 1
                    monitor.record(step, loss=float(loss.item()))  # the gradient of this step, before the update
                    optimizer.step()
                    if step == steps:
                        break
            monitor.detach()
            return monitor.history


        steps, batch_size = (8, 8) if QUICK else (40, 32)
        lr = 0.1 * batch_size / 128  # the paper's 0.1 at batch 128, scaled linearly to our batch size
        runs = {name: train_and_monitor(name, steps, batch_size, lr) for name in ("plain56", "resnet56")}
        for name, h in runs.items():
            print(f"{name}: loss at step 1 {h.losses[0]:.3f}, at step {h.steps[-1]} {h.losses[-1]:.3f}")
        '''),
        code(r'''
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        for name, h in runs.items():
            grads, weights = h.grad_array("layer"), h.grad_array("weight")
            convs = [i for i, t in enumerate(h.layer_types) if t == "Conv2d"]
            style = "--" if name.startswith("plain") else "-"
            axes[0].semilogy(h.steps, grads[:, convs[0]], style, label=f"{name}: first conv")
            axes[0].semilogy(h.steps, grads[:, convs[-1]], style, alpha=0.5, label=f"{name}: last conv")
            axes[1].semilogy(h.steps, grads[:, convs[0]] / grads[:, convs[-1]], style, label=name)
            axes[2].plot(h.steps, weights[:, convs[0]], style, label=f"{name}: first conv")
        axes[0].set_title(r"$\|\partial L/\partial W\|$")
        axes[1].set_title("first conv / last conv gradient")
        axes[1].axhline(1, color="0.5", lw=0.8)
        axes[2].set_title(r"$\|W\|$ of the first conv")
        for ax in axes:
            ax.set_xlabel("SGD step")
            ax.legend(fontsize="small")
            ax.grid(True, which="both", alpha=0.3)
        plt.show()

        show(plots.plot_depth_profile(runs, FIGURES / "profile_training",
                                      title="Weight-gradient norm per layer: first step and last step"))
        for name, h in runs.items():
            show(plots.plot_heatmap(h, FIGURES / f"heatmap_{name}"))
        '''),
        md(r'''
        What happens to the plain network's exploding gradient: the huge first gradient (carried on by
        momentum for the next steps) makes the early weights **grow** many times over, while in ResNet-56
        they barely change (right panel of the first figure). Because every convolution is followed by
        batch norm, its output does not depend on the *scale* of its weights; such a layer's gradient is
        orthogonal to $W$ and shrinks like $1/\|W\|$, and the relative size of its updates like
        $1/\|W\|^2$. So once the early weights of plain-56 have grown, their gradients collapse. Given a
        few dozen steps (the full mode of this notebook runs 40; quick mode stops much earlier) the
        picture flips: plain-56's first layers receive the *smallest* gradients in the network, relative
        to weights that are now many times larger, so they are effectively **frozen** (right panel of the
        profile figure). The deep plain network then trains like a shallower one carrying a stack of
        nearly fixed layers at its bottom. ResNet-56 keeps gradients of a similar size at every depth
        throughout, and all of its layers keep learning. (The heatmaps show every step; each has its own
        colour scale.)

        That is the optimisation difficulty behind the degradation result (notebook 6), and the identity
        shortcut is what removes it.

        ## Summary

        * The gradient at an early layer is a product of one Jacobian per later layer; products of many
          factors explode or vanish exponentially with depth.
        * In plain networks with batch norm the gradient *grows* towards the input: first/last ratios of
          $10^3$ or more at 56 layers. A first SGD step then inflates the early weights, which batch norm
          turns into frozen layers.
        * A residual block's Jacobian is $I + \partial F/\partial x$; with batch norm in the branch the
          branches shrink relative to the stream, and the gradient stays within a small factor at every
          depth.
        * `GradientMonitor` measures per-layer $\|\partial L/\partial W\|$ and per-block
          $\|\partial L/\partial x\|$; `depth_sweep`, `gradflow` and `minires.diagnostics.plots` turn that
          into tables and figures (the command-line versions: `minires gradflow`, `minires compare`).

        ## Exercises

        **Exercise 1 (initialisation decides).** Build plain-56 without batch norm, multiply every
        convolution weight by 0.8 (then by 1.25), run one forward and backward pass with a
        `GradientMonitor`, and look at $\|\partial L/\partial x\|$ at the block inputs. Estimate the gain per
        block. What do you expect it to be, given that a block has two convolutions?
        '''),
        solution(r'''
        # Solution to exercise 1
        # Scaling every conv by s scales each layer's backward gain by about s, so each two-conv block
        # multiplies the gradient by about s^2 on its way down: 0.64 (vanishing) or 1.56 (exploding).
        images1, labels1 = fixed_batch(8 if QUICK else 16, 32)
        for scale in (0.8, 1.0, 1.25):
            model = without_batch_norm(models.plain56(seed=0))
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.data *= scale
            with GradientMonitor(model) as mon:
                F.cross_entropy(model(images1), labels1).backward()
                mon.record(0)
            dl_dx = mon.history.grad_array("block_in")[0]
            per_block = (dl_dx[0] / dl_dx[-1]) ** (1 / (len(dl_dx) - 1))
            print(f"scale {scale}: ||dL/dx|| at block 1 {dl_dx[0]:.2e}, at block {len(dl_dx)} {dl_dx[-1]:.2e}; "
                  f"gain per block {per_block:.3f} (s^2 = {scale**2:.3f})")
        '''),
        md(r'''
        **Exercise 2 (hooks by hand).** Without `GradientMonitor`, measure $\|\partial L/\partial x\|$ at
        the input of each of the three stages of ResNet-56 (`model.layer1`, `layer2`, `layer3`). Use
        `Module.register_forward_hook(hook)` (the hook is called as `hook(module, inputs, output)`) to
        reach the input tensor, and `Tensor.register_hook` on it. Compare with the monitor's values for
        blocks `layer1.0`, `layer2.0` and `layer3.0`.
        '''),
        solution(r'''
        # Solution to exercise 2
        model = models.resnet56(seed=0)
        norms, handles = {}, []
        for stage in ("layer1", "layer2", "layer3"):
            def forward_hook(module, inputs, output, stage=stage):
                inputs[0].register_hook(lambda g: norms.__setitem__(stage, float(np.linalg.norm(g.numpy()))))
            handles.append(getattr(model, stage).register_forward_hook(forward_hook))
        with GradientMonitor(model) as mon:
            F.cross_entropy(model(images), labels).backward()
            mon.record(0)
        for h in handles:
            h.remove()
        blocks = mon.history.blocks
        for stage in ("layer1", "layer2", "layer3"):
            monitor_value = mon.history.block_grad_in[0][blocks.index(f"{stage}.0")]
            print(f"{stage}: by hand {norms[stage]:.6e}, GradientMonitor {monitor_value:.6e}")
        '''),
        md(r'''
        **Exercise 3 (blocks that start as the identity).** Build ResNet-56 with
        `zero_init_residual=True` (every residual branch ends with a batch norm whose $\gamma$ is 0) and
        compare its block-input gradient norms at initialisation with the default ResNet-56. Explain the
        result. Which convolutions receive no gradient at all in the first step, and why?
        '''),
        solution(r'''
        # Solution to exercise 3
        # With gamma = 0 every branch outputs 0, so each block is y = relu(s(x)) = s(x) (its input comes out
        # of a ReLU, so it is non-negative): the gradient passes through every block unchanged, and
        # ||dL/dx|| is the same at every block input (option A drops positions and adds zero channels, but
        # the dropped positions had no influence on the loss, so no gradient is lost). Every convolution
        # INSIDE a branch gets a zero gradient: whatever it does is multiplied by gamma = 0 at the end of
        # its branch. Only the stem conv, the fc layer and the BN parameters (the zeroed gammas included)
        # learn in the first step; once the gammas move away from 0, the branches start to learn too.
        for zero_init in (False, True):
            model = models.resnet56(seed=0, zero_init_residual=zero_init)
            with GradientMonitor(model) as mon:
                F.cross_entropy(model(images), labels).backward()
                mon.record(0)
            dl_dx = mon.history.grad_array("block_in")[0]
            conv_grads = {name: float(np.linalg.norm(m.weight.grad)) for name, m in model.named_modules()
                          if isinstance(m, nn.Conv2d)}
            zero = [name for name, g in conv_grads.items() if g == 0.0]
            print(f"zero_init_residual={zero_init}: ||dL/dx|| from block 1 to 27 spans "
                  f"{dl_dx.min():.3e} .. {dl_dx.max():.3e}; convs with zero gradient: {len(zero)} of {len(conv_grads)}")
        '''),
    ]


def notebook_06():
    return [
        md(r'''
        # 6. Training a ResNet on CIFAR-10

        The previous notebooks took a ResNet apart; this one trains one. CIFAR-10 has 50,000 training and
        10,000 test images of 32x32 pixels in 10 classes, and it is the data set of the paper's depth
        experiments (section 4.2).

        **By the end of this notebook you will understand**

        * how the images get from disk into normalised, augmented mini-batches (`minires.data`);
        * what the paper's augmentation (pad by 4, random 32x32 crop, horizontal flip) does to an image;
        * how a training run is organised: a recipe (optimiser and learning-rate schedule), the
          `Trainer` loop, metrics and checkpoints, and how to run the full schedule on a GPU;
        * the *degradation* result that motivated residual learning, and where this project's own
          measurements of it are.

        The data set is read from the directory in `$MINIRES_DATA` (it must contain
        `cifar-10-batches-py/`). Where it is missing, the notebook uses a small synthetic stand-in and
        says so; everything still runs, but the pictures and numbers are then not CIFAR-10's.
        '''),
        setup('''
        import os
        import tempfile
        from pathlib import Path
        from types import SimpleNamespace

        import matplotlib.pyplot as plt
        import numpy as np
        from IPython.display import Image, display

        import minires
        from minires import nn, recipes
        from minires.data import (CIFAR10_MEAN, CIFAR10_STD, CIFARError, DataLoader, channel_stats, load_cifar10,
                                  normalize, resolve_data_dir, standard_augment, to_float)
        from minires.optim import SGD
        from minires.train import TrainConfig, Trainer
        '''),
        md(r'''
        ## 1. The data

        `load_cifar10` finds the official python release (or downloads and verifies it, when allowed),
        decodes it into `uint8` arrays in NCHW layout, and caches the decoded arrays so that the next
        load takes a fraction of a second. We never download here (`download=False`).
        '''),
        code(r'''
        def synthetic_cifar(n_train, n_test, seed=0):
            """A learnable stand-in for CIFAR-10 (uint8 (N, 3, 32, 32) images): a smooth colour pattern per class plus noise."""
            rng = np.random.default_rng(seed)
            patterns = rng.uniform(0, 255, size=(10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)

            def make(n):
                labels = rng.integers(0, 10, size=n)
                noisy = 0.6 * patterns[labels] + 51 + rng.normal(0, 40, size=(n, 3, 32, 32))
                return np.clip(noisy, 0, 255).astype(np.uint8), labels.astype(np.int64)

            (train_x, train_y), (test_x, test_y) = make(n_train), make(n_test)
            return SimpleNamespace(train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y,
                                   classes=[f"pattern {i}" for i in range(10)], source="synthetic")


        try:
            data = load_cifar10(resolve_data_dir(), download=False)  # $MINIRES_DATA, else ~/.cache/minires
            REAL_DATA = True
            print(data)
        except CIFARError as err:
            REAL_DATA = False
            data = synthetic_cifar(5000, 1000)
            print("NOTE: CIFAR-10 is not available here, so this notebook uses SYNTHETIC images: the pictures and "
                  "accuracies below are not CIFAR-10's. Set MINIRES_DATA to a directory containing "
                  "cifar-10-batches-py to use the real data.\n  " + str(err).split(". ")[0])

        print("train images:", data.train_images.shape, data.train_images.dtype, "| labels:", data.train_labels.shape,
              data.train_labels.dtype)
        print("test images: ", data.test_images.shape, "| images per class (train):", np.bincount(data.train_labels))
        '''),
        code(r'''
        def show_images(images, titles=None, rows=1, scale=1.3):
            """Draw uint8 (N, 3, H, W) images in a grid."""
            cols = int(np.ceil(len(images) / rows))
            fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows + 0.3 * (titles is not None)),
                                     squeeze=False)
            for ax in axes.flat:
                ax.axis("off")
            for i, img in enumerate(images):
                ax = axes.flat[i]
                ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")  # CHW -> HWC; show the true pixels
                if titles is not None:
                    ax.set_title(titles[i], fontsize=8)
            return fig


        first_of_class = [np.flatnonzero(data.train_labels == c)[:2] for c in range(10)]
        picks = np.concatenate([[idx[0] for idx in first_of_class], [idx[1] for idx in first_of_class]])
        show_images(data.train_images[picks], [data.classes[data.train_labels[i]] for i in picks], rows=2)
        plt.show()
        '''),
        md(r'''
        ## 2. Normalisation and augmentation

        Networks train best on inputs with about zero mean and unit variance, so every pixel is scaled to
        $[0, 1]$ and then normalised per channel with the training set's mean and standard deviation
        (`CIFAR10_MEAN`, `CIFAR10_STD`; `channel_stats` computes them). The paper subtracted the per-pixel
        mean; per-channel statistics are the common modern choice and work as well.
        '''),
        code(r'''
        n_stats = 2000 if QUICK else 20000
        mean, std = channel_stats(data.train_images[:n_stats])
        print(f"first {n_stats} training images: mean {np.round(mean, 4)}, std {np.round(std, 4)}")
        print(f"minires constants (all 50,000):  mean {CIFAR10_MEAN}, std {CIFAR10_STD}")
        batch = normalize(to_float(data.train_images[:256]))
        print("after normalize(to_float(...)): per-channel mean", batch.mean(axis=(0, 2, 3)).round(3),
              "std", batch.std(axis=(0, 2, 3)).round(3), batch.dtype)
        '''),
        md(r'''
        With 50,000 images and a network of 0.27 M parameters (ResNet-20), the network could eventually
        memorise the training set. **Data augmentation** shows it a slightly different version of each
        image every epoch. The paper's recipe: pad each image with 4 zero pixels on every side (40x40),
        take a random 32x32 crop (a shift of up to 4 pixels in each direction), and flip it horizontally
        with probability 1/2. Neither changes what the image shows. `standard_augment(batch, rng)` does
        this for a whole `uint8` batch at once, with no Python loop over images, and draws its random
        numbers from the generator it is given, so the same generator state gives the same augmentation
        (which is what makes runs reproducible and resumable). Each row below is one image: the original,
        then five augmented versions. The black bars are the zero padding that a shifted crop brings in.
        '''),
        code(r'''
        originals = data.train_images[picks[:6]]
        rng = np.random.default_rng(0)
        versions = [originals] + [standard_augment(originals, rng) for _ in range(5)]
        grid = np.stack(versions, axis=1).reshape(-1, 3, 32, 32)  # image-major: one row per original
        show_images(grid, ["original"] + ["augmented"] * 5 + [""] * (len(grid) - 6), rows=6)
        plt.show()
        '''),
        md(r'''
        ## 3. Mini-batches: `DataLoader`

        `DataLoader` ties it together: each epoch it shuffles the examples, cuts them into batches,
        augments each batch (on the device that holds it) and normalises it, and yields a pair of tensors.
        Every random choice is a function of `(seed, epoch, batch index)`, so the same seed gives the same
        batches, and a run resumed from a checkpoint continues with exactly the batches it would have
        seen. `drop_last=True` skips a final incomplete batch (a batch of a few examples would give batch
        norm poor statistics).
        '''),
        code(r'''
        loader = DataLoader(data.train_images, data.train_labels, batch_size=128, shuffle=True, drop_last=True,
                            seed=0, augment=standard_augment)
        images, labels = next(iter(loader))
        print(f"{len(loader)} batches per epoch; images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}")
        # Below zero on average: the crops bring in black padding, which normalises to about -1.9.
        print("normalised, augmented batch: mean per channel", images.numpy().mean(axis=(0, 2, 3)).round(3))

        again = DataLoader(data.train_images, data.train_labels, batch_size=128, shuffle=True, drop_last=True,
                           seed=0, augment=standard_augment)
        print("same seed, same first batch:", np.array_equal(next(iter(again))[0].numpy(), images.numpy()))
        print("epoch 0 and epoch 1 start with the same examples:", np.array_equal(loader.order(0)[:128], loader.order(1)[:128]))
        '''),
        md(r'''
        ## 4. The recipe: optimiser and learning-rate schedule

        The paper trains with SGD (momentum 0.9, weight decay $10^{-4}$, batch 128), learning rate 0.1,
        divided by 10 at 32,000 and 48,000 iterations, stopping at 64,000 (about 164 epochs). minires's
        `paper` recipe states the schedule in *fractions* of the run (50% and 75%), so that a short run
        keeps the same shape. ResNet-110 starts at 0.01 for the first 400 iterations, because 0.1 is too
        large to start converging it. The `fast` recipe (not from the paper) is a 30-epoch alternative:
        a short linear warm-up, then a cosine decay to zero. The schedules are closed-form functions of the
        iteration count:
        '''),
        code(r'''
        total = 164 * (50000 // 128)  # the full paper run, one scheduler step per iteration
        dummy = SGD([nn.Parameter(np.zeros(1, dtype=np.float32))], lr=0.1)
        t = np.arange(total)
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
        for name, depth, style in [("paper", 20, "-"), ("paper", 110, ":"), ("fast", 20, "--")]:
            schedule = recipes.build_schedule(dummy, recipes.get_recipe(name), total, depth)
            lrs = [schedule.lr_at(0.1, int(k)) for k in t]
            label = f"{name} (depth {depth})"
            axes[0].plot(t, lrs, style, label=label)
            axes[1].plot(t[:1500], lrs[:1500], style, label=label)
        axes[0].set_yscale("log")
        axes[0].set_ylim(3e-4, 0.3)  # the cosine ends at exactly 0, which a log axis cannot show
        axes[0].set_title(f"learning rate over the full run ({total:,} iterations)")
        axes[1].set_title("the first 1,500 iterations (warm-ups)")
        for ax in axes:
            ax.set_xlabel("iteration")
            ax.legend(fontsize="small")
            ax.grid(True, which="both", alpha=0.3)
        plt.show()
        '''),
        md(r'''
        ## 5. A short training run on the CPU

        `minires.train.Trainer` runs the loop: for every batch, forward pass, cross-entropy loss,
        `zero_grad`, `backward`, `optimizer.step()` and one step of the schedule; after every epoch, an
        evaluation on the test set (batch norm in evaluation mode, no graph recorded), a row of metrics in
        `metrics.jsonl` and `metrics.csv`, and a checkpoint from which the run can be resumed exactly.
        A `TrainConfig` describes the run. On a CPU we can afford only a small slice of the real thing:
        a few epochs over a few thousand images.
        '''),
        code(r'''
        if QUICK:
            config = TrainConfig(model="resnet_cifar", model_kwargs={"depth": 8, "width": 8}, recipe="paper", epochs=2,
                                 batch_size=32, limit_train=256, limit_test=256, device="cpu")
        else:
            config = TrainConfig(model="resnet20", recipe="paper", epochs=4, batch_size=64, limit_train=2560,
                                 limit_test=1000, device="cpu")
        run_dir = Path(tempfile.mkdtemp(prefix="minires-run-"))
        trainer = Trainer(config, data, run_dir, progress=False)
        print(f"{config.model}{' ' + str(config.model_kwargs) if config.model_kwargs else ''}: "
              f"{trainer.steps_per_epoch} steps per epoch, "
              f"{trainer.total_steps} steps in all, on {trainer.device}\n")
        metrics = trainer.fit()
        print("\nfiles in the run directory:", sorted(p.name for p in run_dir.iterdir()))
        '''),
        code(r'''
        epochs = [row["epoch"] for row in metrics]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
        axes[0].plot(epochs, [row["train_loss"] for row in metrics], "o-", label="training loss")
        axes[0].plot(epochs, [row["test_loss"] for row in metrics], "s--", label="test loss")
        axes[1].plot(epochs, [100 * (1 - row["train_acc"]) for row in metrics], "o-", label="training error")
        axes[1].plot(epochs, [100 * (1 - row["test_acc"]) for row in metrics], "s--", label="test error")
        axes[0].set_ylabel("cross-entropy")
        axes[1].set_ylabel("error (%)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.set_xticks(epochs)
            ax.legend()
            ax.grid(True, alpha=0.3)
        fig.suptitle("A short CPU run" + ("" if REAL_DATA else " (synthetic data)"))
        plt.show()
        '''),
        md(r'''
        A few minutes of CPU time only scratch the surface: the full schedule is 64,000 iterations of
        batch 128, hundreds of times the work of the run above. Two details of the curves: the training
        error is the running average over each epoch's augmented batches, measured while the weights
        were still changing, which is why it can sit above the test error early on; and the test loss
        after the first epoch can be high because evaluation uses batch norm's running statistics, which
        lag behind weights that are still changing fast.

        ## 6. The full run, on a GPU

        The same loop runs on a GPU when CuPy is installed (see the main README for the wheel that
        matches your CUDA version). From the repository root:

        ```
        minires train --model resnet20 --recipe paper --device cuda --out runs/resnet20
        ```

        Useful variations:

        * `--val-split` holds out 5,000 training images for validation, as the paper does for tuning;
        * `--resume` continues an interrupted run from `runs/resnet20/checkpoint.npz` (Ctrl-C saves one
          after the current step); the result is the same as an uninterrupted run;
        * `--grad-norms 100` logs per-layer gradient norms every 100 steps (notebook 5);
        * `--model plain20`, `resnet56`, `plain56`, ... for the other depths;
        * `minires eval --checkpoint runs/resnet20/checkpoint.npz` measures a saved model on the test set.

        The paper reports 8.75% test error for ResNet-20 after this schedule (table 6); individual runs
        vary by a few tenths of a percent. Here is what the command resolves to:
        '''),
        code(r'''
        full = TrainConfig(model="resnet20", recipe="paper", device="cuda").resolved()
        steps_per_epoch = 50000 // full.batch_size
        print(f"recipe '{full.recipe}': {full.epochs} epochs x {steps_per_epoch} steps = {full.epochs * steps_per_epoch:,} "
              f"iterations of batch {full.batch_size}, peak lr {full.lr}")
        print(recipes.get_recipe("paper").description)
        '''),
        md(r'''
        ## 7. The degradation problem

        The experiment that motivated residual learning compares plain networks of different depths. The
        paper's figure 6 (left) trains plain networks of 20, 32, 44 and 56 layers on CIFAR-10: the
        **deeper plain networks have higher training error** throughout training, not just higher test
        error. That rules out overfitting: the deeper network is worse at fitting the very data it is
        trained on, although it could represent the shallower network exactly (by making its extra layers
        identities). Batch norm is used everywhere, so the forward and backward signals do not simply die
        out; the deep plain networks are hard to *optimise*. With identity shortcuts the trend reverses:

        | network | test error (paper) |
        |---|---|
        | plain-20 | about 9.5% (read off figure 6) |
        | plain-56 | about 13.5% (read off figure 6) |
        | ResNet-20 | 8.75% |
        | ResNet-56 | 6.97% |
        | ResNet-110 | 6.43% (best of 5 runs) |

        Plain-110 does not train at all (over 60% error). Notebook 5 showed the mechanism at the level of
        gradients. This project reproduces the comparison in miniature with `minires compare`: a short run
        on a CPU, so the absolute errors are far above the paper's and only the *comparisons* mean
        something. `docs/results/README.md` describes the setup and discusses the numbers, and
        `docs/results/reproduce.sh` has the exact commands; the committed summary and figures are shown
        below.
        '''),
        code(r'''
        def find_results_dir():
            """docs/results of this repository: next to the notebooks, or next to the installed minires package."""
            for root in (Path.cwd().parent, Path.cwd(), Path(minires.__file__).resolve().parents[1]):
                if (root / "docs" / "results").is_dir():
                    return root / "docs" / "results"
            return None


        results = find_results_dir()
        preferred = ["degradation_long/training_curves.png", "degradation/gradient_depth.png",
                     "gradflow/depth_sweep.png", "gradflow/gradflow.png"]
        pngs = sorted(results.rglob("*.png")) if results else []
        if not pngs:
            print("NOTE: no committed result figures found (docs/results/**/*.png is missing in this checkout); "
                  "run docs/results/reproduce.sh to produce them.")
        else:
            chosen = [results / p for p in preferred if (results / p).is_file()] or pngs[:4]
            summary_txt = results / "degradation_long" / "summary.txt"
            if summary_txt.is_file():
                print(summary_txt.read_text())
            for path in chosen:
                print(path.relative_to(results.parent.parent))
                display(Image(filename=str(path), width=900))
            others = [p.relative_to(results.parent.parent) for p in pngs if p not in chosen]
            if others:
                print("more figures:", ", ".join(str(p) for p in others))
        '''),
        md(r'''
        ## Summary

        * `load_cifar10` gives `uint8` NCHW arrays; `DataLoader` shuffles, augments (pad 4, random crop,
          flip), normalises and batches them, reproducibly from a seed.
        * A recipe fixes the optimiser and the learning-rate schedule; the `paper` recipe is SGD with
          momentum, lr 0.1 divided by 10 at 50% and 75% of the run.
        * `Trainer` (or `minires train`) runs the loop, writes metrics and checkpoints, and resumes exactly.
        * Deeper plain networks train to a *higher* training error than shallower ones (degradation);
          residual networks do not degrade. In the paper, with its full schedule, ResNet-56 also ends
          *below* ResNet-20; in the short CPU runs above the two stay within about a point of each
          other (ResNet-56 slightly above), so that half of the result still waits for a GPU run.

        ## Exercises

        **Exercise 1 (write an augmentation).** *Cutout* (DeVries and Taylor, 2017) blanks a random 8x8
        square of every image. Write `cutout(batch, rng)` for a `uint8` batch, without a loop over images,
        combine it with `standard_augment`, and show a few results. A function with the signature
        `augment(batch, rng) -> batch` can be passed to `DataLoader(augment=...)`.
        '''),
        solution(r'''
        # Solution to exercise 1
        def cutout(batch, rng, size=8):
            """Zero a random size x size square (its centre anywhere in the image, so it may be clipped) per image."""
            n, _, h, w = batch.shape
            cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
            rows, cols = np.arange(h), np.arange(w)
            inside_y = (rows[None, :] >= cy[:, None] - size // 2) & (rows[None, :] < cy[:, None] + size // 2)  # (n, h)
            inside_x = (cols[None, :] >= cx[:, None] - size // 2) & (cols[None, :] < cx[:, None] + size // 2)
            mask = inside_y[:, None, :, None] & inside_x[:, None, None, :]  # (n, 1, h, w), broadcast over channels
            return np.where(mask, 0, batch).astype(batch.dtype)


        def augment_with_cutout(batch, rng):
            return cutout(standard_augment(batch, rng), rng)


        rng = np.random.default_rng(1)
        show_images(augment_with_cutout(data.train_images[picks[:10]], rng), rows=1)
        plt.show()
        cutout_loader = DataLoader(data.train_images, data.train_labels, batch_size=64, augment=augment_with_cutout)
        print("a cutout batch:", next(iter(cutout_loader))[0].shape)
        '''),
        md(r'''
        **Exercise 2 (counting iterations).** With the paper's 45k/5k split (`TrainConfig(val_split=5000)`)
        and batch 128, how many iterations does one epoch have (the last incomplete batch is dropped), and
        how many epochs do 64,000 iterations take? Check the first number with a `DataLoader`.
        '''),
        solution(r'''
        # Solution to exercise 2
        # 45,000 // 128 = 351 iterations per epoch; 64,000 / 351 = 182.3 epochs.
        # (minires's `paper` recipe counts 164 epochs of the full 50,000 images instead: 164 * 390 = 63,960.)
        per_epoch = 45000 // 128
        print(per_epoch, "iterations per epoch;", round(64000 / per_epoch, 1), "epochs for 64,000 iterations")
        if data.train_images.shape[0] >= 45000:
            check = DataLoader(data.train_images[:45000], data.train_labels[:45000], batch_size=128, drop_last=True)
            print("DataLoader over 45,000 images:", len(check), "batches")
        '''),
        md(r'''
        **Exercise 3 (recipes at a tiny budget).** Train the same very small network (`resnet_cifar` with
        depth 8 and width 8) for 2 epochs on 512 images with the `paper` and with the `fast` recipe, and
        compare the test accuracies. Which schedule spends more of this short budget at a high learning
        rate?
        '''),
        solution(r'''
        # Solution to exercise 3
        # The paper schedule stays at 0.1 for the first half, then drops to 0.01 and 0.001; the fast one warms up
        # for 5% of the run and then decays along a cosine, so it spends more time at intermediate rates. With so
        # few steps the difference is mostly noise; the point is that both schedules keep their shape at any length.
        for recipe_name in ("paper", "fast"):
            small = TrainConfig(model="resnet_cifar", model_kwargs={"depth": 8, "width": 8}, recipe=recipe_name,
                                epochs=2, batch_size=32, limit_train=512, limit_test=500, device="cpu")
            rows = Trainer(small, data, tempfile.mkdtemp(prefix="minires-recipe-"), progress=False, verbose=False).fit()
            print(f"{recipe_name:>5}: after 2 epochs test accuracy {100 * rows[-1]['test_acc']:.1f}%, test loss "
                  f"{rows[-1]['test_loss']:.3f}, training loss {rows[-1]['train_loss']:.3f}")
        '''),
    ]


NOTEBOOKS = {
    "01_autograd.ipynb": notebook_01,
    "02_convolution_im2col.ipynb": notebook_02,
    "03_batch_norm.ipynb": notebook_03,
    "04_residual_blocks.ipynb": notebook_04,
    "05_gradient_flow.ipynb": notebook_05,
    "06_training_cifar10.ipynb": notebook_06,
}


if __name__ == "__main__":
    sys.exit(main())
