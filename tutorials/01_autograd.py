# %% [markdown]
# # 1. Autograd from scratch
#
# Every network in minires learns by gradient descent, and every gradient it uses comes from one
# small piece of machinery: reverse-mode automatic differentiation, "autograd". This notebook
# takes that machinery apart on a problem small enough to do by hand.
#
# **By the end of this notebook you will understand**
#
# * what a computational graph is, and how a forward pass builds one as a side effect;
# * how the chain rule, applied from the loss backwards through the graph, produces the gradient
#   with respect to *every* input in a single sweep;
# * how minires records the graph (`Tensor._ctx`, the `Function` classes and their `Context`) and
#   how `backward()` replays it, well enough to rewrite `backward()` yourself in about 30 lines;
# * how to add a new differentiable operation by writing a `Function`;
# * how to check a gradient three ways (by hand, with `backward()`, with `minires.gradcheck`),
#   and why the check runs in float64 with a *random* upstream gradient.
#
# You need NumPy and first-year calculus (the derivative of a product and of `tanh`).
#
# **Your turn.** Two cells of this notebook are left for you to complete: the backward pass of a
# small graph, by hand (section 2), and a new differentiable operation (section 5). Each is
# followed by a check cell that fails, with a message saying what is wrong, until your code is
# right. Nothing else in the notebook depends on your answers, so it runs top to bottom either way.
# The solutions are in `tutorials/solutions/01_autograd.py`: try first.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

import minires
from minires import Tensor
from minires.ops import elementwise

# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")


# %% [markdown]
# ## 1. A computational graph
#
# Take one neuron with a squared-error loss. With input $x$, weight $w$, bias $b$ and target $t$:
#
# $$z = w\,x + b, \qquad a = \tanh(z), \qquad L = (a - t)^2 .$$
#
# Each step is one elementary operation. Draw every operation as a node and every value it
# consumes as an edge and you get a directed acyclic graph: the inputs (the *leaves*) at one end,
# the loss at the other. minires builds this graph while it computes the forward pass; nothing has
# to be declared in advance. We use float64 here so that the numbers we compute by hand and the
# ones minires computes agree to the last digit.

# %%
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


# %% [markdown]
# `L` knows how it was made: `L._ctx` is the record of the operation that produced it, and that
# record points at the operation's inputs, which point at *their* inputs, down to the leaves. The
# function below walks those links and draws what it finds.

# %%
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

# %% [markdown]
# Blue boxes are the leaves we asked gradients for, grey ones constants (the target $t$ was turned
# into a tensor without a gradient), orange ones operations with the value they produced. The
# exponent 2 is not a box: it is a fixed parameter of the `Pow` operation, not an input.
#
# ## 2. The chain rule, by hand
#
# $L$ depends on $w$ only through $z$, and on $z$ only through $a$. The chain rule multiplies the
# local derivatives along that path:
#
# $$\frac{\partial L}{\partial w}
#   = \frac{\partial L}{\partial a}\,\frac{\partial a}{\partial z}\,\frac{\partial z}{\partial w}
#   = 2(a - t)\,\bigl(1 - a^2\bigr)\,x .$$
#
# *Reverse mode* evaluates such products starting from the loss. It first computes
# $\partial L/\partial a$, then $\partial L/\partial z = \partial L/\partial a \cdot (1 - a^2)$, a
# number that is **shared** by everything below $z$, and then needs only one multiplication per
# input of $z$: $\partial L/\partial w = \partial L/\partial z \cdot x$,
# $\partial L/\partial x = \partial L/\partial z \cdot w$, $\partial L/\partial b = \partial L/\partial z$.
#
# One backward sweep gives the gradient with respect to *every* input, at a cost that does not
# depend on how many inputs there are: a small constant multiple of the forward pass, typically
# two to three times its cost. (A layer $y = Wx$ needs one matrix product forward but two backward,
# $\partial L/\partial x = W^\top g$ and $\partial L/\partial W = g\,x^\top$.) A network has one
# scalar loss and millions of parameters, which is exactly the case where this pays off: computing
# each parameter's derivative separately would cost one forward pass per parameter.
#
# **Your turn: the backward pass of a small graph.** Complete `neuron_gradients` below. It receives
# the values of $x$, $w$, $b$ and $t$ (floats, or NumPy arrays of one shape, one neuron per
# element), runs the forward pass (given), and must return
# $(\partial L/\partial x, \partial L/\partial w, \partial L/\partial b)$, computed the way reverse
# mode does: $\partial L/\partial a$ first, then $\partial L/\partial z$, then one product per
# input. Use only NumPy, no minires. The cell after it compares your gradients with minires's
# `backward()` at 100 random points.

# %% tags=["stub"]
def neuron_gradients(x, w, b, t):
    """(dL/dx, dL/dw, dL/db) of L = (tanh(w x + b) - t)^2, by the chain rule, in NumPy."""
    z = w * x + b  # the forward pass
    a = np.tanh(z)  # noqa: F841 (unused until you write your code)
    # Your code: dL_da, then dL_dz (remember tanh'(z) = 1 - tanh(z)^2), then the three gradients.
    raise NotImplementedError("implement neuron_gradients above: return (dL_dx, dL_dw, dL_db)")


# %% tags=["check", "raises-exception"]
def check_neuron_gradients():
    """Compare neuron_gradients with minires's backward() at 100 random points (float64)."""
    rng = np.random.default_rng(2024)
    values = {name: rng.normal(size=100) for name in "xwbt"}
    try:
        mine = neuron_gradients(values["x"], values["w"], values["b"], values["t"])
    except NotImplementedError as err:
        raise AssertionError(f"{err}, then run this cell again") from None
    assert isinstance(mine, tuple) and len(mine) == 3, (
        f"neuron_gradients must return a tuple (dL_dx, dL_dw, dL_db), got {type(mine).__name__}")
    leaves = {name: Tensor(values[name], requires_grad=True) for name in "xwb"}
    loss = ((leaves["w"] * leaves["x"] + leaves["b"]).tanh() - Tensor(values["t"])) ** 2
    loss.sum().backward()  # every point's loss depends on its own inputs only: one backward gives all 100
    for name, got in zip("xwb", mine):
        expected = leaves[name].grad
        got = np.broadcast_to(np.asarray(got, dtype=np.float64), expected.shape)
        error = np.abs(got - expected).max() / np.abs(expected).max()
        assert error < 1e-10, (
            f"dL/d{name} from neuron_gradients is wrong (relative error {error:.1e} against minires's backward). "
            f"At x={values['x'][0]:.3f}, w={values['w'][0]:.3f}, b={values['b'][0]:.3f}, t={values['t'][0]:.3f} "
            f"you return {got[0]:.6f}, the right value is {expected[0]:.6f}")
    print("check passed: neuron_gradients agrees with backward() at 100 random points")


check_neuron_gradients()


# %% [markdown]
# ## 3. How minires records the graph
#
# Every tensor produced by an operation carries `_ctx`, a `Context` object that remembers:
#
# * `fn`: the `Function` subclass that made the tensor (`Mul`, `Tanh`, ...);
# * `inputs`: the input tensors, i.e. the edges of the graph;
# * `needs_input_grad`: which inputs need a gradient, so `backward` may skip work;
# * `saved_tensors`: the raw arrays that the backward formula will need (for `tanh`, its output).
#
# Leaves have `_ctx = None`.

# %%
def describe(name, tensor):
    ctx = tensor._ctx
    if ctx is None:
        return f"{name}: a leaf, requires_grad={tensor.requires_grad}"
    saved = [np.round(np.asarray(s), 4).tolist() for s in ctx.saved_tensors]
    return (f"{name}: made by {ctx.fn.__name__} from {len(ctx.inputs)} input(s); "
            f"needs_input_grad={ctx.needs_input_grad}; saved for backward: {saved}")


for name, tensor in [("L", L), ("a", a), ("z", z), ("w", w)]:
    print(describe(name, tensor))

# %% [markdown]
# A `Function` is a pair of static methods on **raw arrays** (NumPy, or CuPy on a GPU): `forward`
# computes the output and saves what the backward pass will need; `backward` receives
# `grad` $= \partial L/\partial(\text{output})$ and returns one gradient per input, the chain rule
# applied locally. Here are two of minires's own operations, exactly as they are in
# `minires/ops/elementwise.py` (their base classes are `Function` subclasses that add checks of
# shapes and dtypes):

# %%
print(inspect.getsource(elementwise.Mul))
print(inspect.getsource(elementwise.Tanh))


# %% [markdown]
# `Function.apply` (in `minires/function.py`) is the glue: it unwraps the tensors, calls `forward`,
# wraps the result in a new `Tensor` and, if any input needs a gradient, attaches the `Context`.
#
# `backward()` then **replays** the graph in reverse. It puts the tensors in topological order
# (every tensor after the tensors it was computed from), walks that order backwards, and hands
# each node the *sum* of the gradients sent by all of its consumers. The real implementation
# (`_run_backward` in `minires/tensor.py`) adds hooks, error messages and memory release; the
# essence fits in one cell. We write it ourselves and compare.

# %%
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
print(f"{'':>6} {'my_backward':>18} {'L.backward()':>18}")
for name in "xwb":
    print(f"dL/d{name} {float(mine[name]):+18.12f} {engine[name]:+18.12f}")

# %% [markdown]
# The two agree to every printed digit (and with your `neuron_gradients`, once it passes its
# check). To see the whole sweep at once, we rebuild the same graph, ask minires to keep the
# gradient of every intermediate tensor too (`retain_grad()`; normally only leaves keep theirs),
# and draw it again: each box now shows its value and, below it, $\partial L/\partial(\text{box})$
# (the constant gets none: nothing asked for it).
# Read the gradients from right to left, the order in which `backward()` computes them: $1$ at the
# loss, multiplied by one local derivative per box.

# %%
def graph_layout(root):
    """Positions, edges and labels of root's graph, computed while the graph still exists."""
    order, level = graph_nodes(root)
    depth = max(level.values())
    columns = {}
    for node in order:
        columns.setdefault(level[id(node)], []).append(node)
    pos = {id(node): (depth - k, (len(nodes) - 1) / 2 - i) for k, nodes in columns.items()
           for i, node in enumerate(nodes)}
    edges = [(parent, node) for node in order for parent in (node._ctx.inputs if node._ctx is not None else ())]
    return order, pos, edges, depth


x2, w2, b2 = leaf(0.5, "x"), leaf(-1.5, "w"), leaf(0.25, "b")
L_again = ((w2 * x2 + b2).tanh() - target) ** 2
order, pos, edges, depth = graph_layout(L_again)  # backward() frees the graph: lay it out first
for node in order:
    if node._ctx is not None:
        node.retain_grad()
L_again.backward()

fig, ax = plt.subplots(figsize=(11, 3.8))
boxes = {}
for node in order:
    text, colour = node_label(node)
    if node.requires_grad:
        text += f"\ngrad {float(node.grad):+.4f}"
    boxes[pos[id(node)]] = ax.text(*pos[id(node)], text, ha="center", va="center", fontsize=10,
                                   bbox=dict(boxstyle="round,pad=0.4", fc=colour, ec="0.4"))
for parent, node in edges:  # the gradient flows against the forward arrows, to the inputs that need one
    if parent.requires_grad:
        start, end = pos[id(parent)], pos[id(node)]
        ax.annotate("", xy=start, xytext=end, arrowprops=dict(
            arrowstyle="->", color="C3", lw=1.3, shrinkA=2, shrinkB=2,
            patchA=boxes[end].get_bbox_patch(), patchB=boxes[start].get_bbox_patch()))
ax.set_xlim(-0.6, depth + 0.6)
ax.set_ylim(-1.6, 1.6)
ax.axis("off")
ax.set_title("After backward(): each box's value and dL/d(box); red arrows: the direction the gradient flows")
plt.show()

# %% [markdown]
# Two details of minires's `backward()` are worth knowing
# (they are PyTorch's semantics too):
#
# * after `backward()` the graph is **freed**: the saved arrays are dropped so their memory can be
#   reused by the next forward pass. A second `backward()` through the same graph is an error,
#   unless the first one was called with `retain_graph=True`;
# * gradients **accumulate** into `.grad`: two backward passes add up. That is why a training loop
#   calls `optimizer.zero_grad()` (or sets `.grad = None`) before each `backward()`.

# %%
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

# %% [markdown]
# ## 4. A tensor used twice: gradients add
#
# When a value feeds several operations, a change in it changes the loss along every path, so its
# gradient is the **sum** of the contributions of all its consumers. That is the `+` in
# `pending.get(...) + g` above. For $y = u\cdot u + u$, $u$ is used three times and
# $dy/du = 2u + 1$.
#
# Keep this in mind for residual networks. If a block computed $y = F(x) + x$, the gradient
# reaching $x$ would be the gradient through the branch $F$ *plus* the gradient through the
# shortcut, and the shortcut would pass its part on unchanged: the block's Jacobian would be
# $I + \partial F/\partial x$. The blocks of the original ResNet, and minires's, apply a ReLU
# *after* the addition, $y = \operatorname{relu}(F(x) + x)$, so both parts first go through the
# ReLU's derivative (1 where $F(x) + x > 0$, 0 elsewhere): the Jacobian is
# $\operatorname{diag}\bigl(\operatorname{relu}'(F(x) + x)\bigr)\,(I + \partial F/\partial x)$, and the
# shortcut's gradient arrives masked, though never scaled by a weight. The "pre-activation" ResNets
# of He et al. (2016, "Identity Mappings in Deep Residual Networks") move every ReLU into the
# branch, so that the identity path carries nothing but the addition and the Jacobian is exactly
# $I + \partial F/\partial x$.

# %%
u = leaf(3.0, "u")
y = u * u + u
y.backward()
print(f"dy/du from backward(): {float(u.grad)};  2u + 1 = {2 * 3.0 + 1}")


# %% [markdown]
# ## 5. Writing your own `Function`
#
# Suppose minires lacked softplus, $\operatorname{softplus}(x) = \log(1 + e^x)$, a smooth version of
# ReLU. Its derivative is the logistic sigmoid: $\frac{d}{dx}\log(1+e^x) = \frac{e^x}{1+e^x} = \sigma(x)$.
# A `Function` needs the forward formula, the backward formula, and whatever the backward needs
# saved (`ctx.save_for_backward(...)` in `forward`, `ctx.saved_tensors` in `backward`, as in `Mul`
# and `Tanh` above). Two habits from minires's own code: use `xp = minires.get_array_module(x)`
# instead of `np`, so the same code runs on CuPy arrays on a GPU, and choose formulas that cannot
# overflow: `np.log(1 + np.exp(x))` is `inf` for $x = 1000$, where softplus is simply $1000$
# (`xp.logaddexp(0, x)` computes $\log(e^0 + e^x)$ safely), and $1/(1 + e^{-x})$ overflows for
# $x = -1000$ (but $\sigma(x) = \frac12\bigl(1 + \tanh(x/2)\bigr)$ never does).
#
# **Your turn: a new `Function`.** Complete `Softplus.forward` and `Softplus.backward` below.
#
# The check cell after it tests your `Function` three ways, the ways to check any backward pass:
#
# 1. **by hand**: the derivative at $-2, 0, 3$ is $\sigma(-2) \approx 0.1192$, $\sigma(0) = 0.5$,
#    $\sigma(3) \approx 0.9526$;
# 2. **with `backward()`**, seeded with a random upstream gradient $g$: the result must be
#    $g \cdot \sigma(x)$, elementwise;
# 3. **with `minires.gradcheck`**, which computes the same quantity by central finite differences
#    and compares every element.
#
# It also makes sure that large inputs neither overflow nor produce NaN.

# %% tags=["stub"]
class Softplus(minires.Function):
    """softplus(x) = log(1 + exp(x)), elementwise: any shape in, the same shape out."""

    @staticmethod
    def forward(ctx, x):
        # Your code: save what backward will need, and return softplus(x) without overflowing.
        raise NotImplementedError("implement Softplus.forward above")

    @staticmethod
    def backward(ctx, grad):
        # Your code: return dL/dx = grad * (the derivative of softplus at x).
        raise NotImplementedError("implement Softplus.backward above")


# %% tags=["check", "raises-exception"]
def check_softplus():
    """Softplus against log(1 + e^x), sigma(x) and finite differences (float64, random upstream gradient)."""
    def softplus(t):
        return Softplus.apply(t)

    points = Tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)
    g = np.random.default_rng(0).standard_normal(3)
    try:
        out = softplus(points)
        out.backward(g)
    except NotImplementedError as err:
        raise AssertionError(f"{err}, then run this cell again") from None
    assert np.allclose(out.numpy(), np.log1p(np.exp(points.data)), rtol=1e-12, atol=0), (
        f"Softplus.forward is wrong: softplus(-2, 0, 3) should be {np.log1p(np.exp(points.data))}, "
        f"you return {out.numpy()}")
    sigma = 1 / (1 + np.exp(-points.data))
    assert points.grad is not None and np.allclose(points.grad / g, sigma, rtol=1e-10, atol=0), (
        f"Softplus.backward is wrong: with upstream gradient g, backward must give g * sigma(x); at x = -2, 0, 3 "
        f"(backward / g) should be {np.round(sigma, 4)}, you give {np.round(points.grad / g, 4)}")
    x = Tensor(np.random.default_rng(1).standard_normal((4, 5)) * 3, requires_grad=True)
    try:
        minires.gradcheck(softplus, [x], seed=0)
    except minires.GradcheckError as err:
        raise AssertionError(f"Softplus.backward disagrees with finite differences: {err}") from None
    big = Tensor(np.array([-1000.0, 1000.0]), requires_grad=True)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow should show as a wrong value below
        out = softplus(big)
        out.backward(np.ones(2))
    assert np.allclose(out.numpy(), [0.0, 1000.0]) and np.allclose(big.grad, [0.0, 1.0]), (
        f"Softplus overflows: softplus(-1000, 1000) should be (0, 1000) with derivatives (0, 1), you give "
        f"{out.numpy()} and {big.grad}; use xp.logaddexp and sigma(x) = (1 + tanh(x / 2)) / 2")
    print("check passed: Softplus is right by hand, with backward(g) and with gradcheck, and never overflows")


check_softplus()


# %% [markdown]
# ### Why the upstream gradient must be random
#
# `gradcheck` seeds the backward pass with a **random** $g$ and compares it with the numerical
# derivative of $\langle f(x), g\rangle = \sum_i f(x)_i\, g_i$. A tempting shortcut is to check
# `f(x).sum().backward()`, i.e. $g = 1$ everywhere. Here is a classic bug that this shortcut cannot
# see: a backward pass that forgets to multiply by the upstream gradient. With $g = 1$,
# multiplying by $g$ changes nothing, so the bug is invisible.

# %%
class SoftplusForgetsGrad(minires.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.logaddexp(0, x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 0.5 * (1 + np.tanh(x / 2))  # BUG: the upstream gradient `grad` is dropped


def buggy(t):
    return SoftplusForgetsGrad.apply(t)


rng = np.random.default_rng(0)
x_bug = Tensor(rng.standard_normal(6), requires_grad=True)
ones = np.ones(6)
buggy(x_bug).backward(ones)
numeric = minires.numerical_gradient(buggy, [x_bug], 0, ones)
print(f"check with g = 1: max |backward - numeric| = {np.abs(x_bug.grad - numeric).max():.1e}  (looks fine!)")

try:
    minires.gradcheck(buggy, [x_bug], seed=0)
except minires.GradcheckError as err:
    print("gradcheck with a random g:", err)

# %% [markdown]
# ## 6. Why gradient checks use float64 and central differences
#
# The numerical derivative $\frac{f(x+\varepsilon) - f(x-\varepsilon)}{2\varepsilon}$ has two
# errors pulling in opposite directions:
#
# * **truncation**: the formula is exact only as $\varepsilon \to 0$; its error shrinks like
#   $\varepsilon^2$ (the one-sided $\frac{f(x+\varepsilon) - f(x)}{\varepsilon}$ only like
#   $\varepsilon$);
# * **rounding**: $f$ is computed with a relative precision of about $10^{-16}$ in float64 but only
#   $10^{-7}$ in float32, and dividing the rounding error by $2\varepsilon$ magnifies it.
#
# The plot measures both for softplus at $x = 0.3$. In float32 the error stays around $10^{-5}$ or
# worse for every step size (an isolated dip is a lucky cancellation, not something to rely on),
# and at $\varepsilon = 10^{-6}$ it is about $10^{-2}$: far too coarse to tell a correct backward
# pass from a slightly wrong one. In float64 with central differences it falls to about
# $10^{-11}$ near $\varepsilon = 10^{-6}$, the default step of `gradcheck` (grey line).

# %%
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

# %% [markdown]
# ## 7. Optional: the same gradients from PyTorch
#
# minires follows PyTorch's names and semantics, so the same computation gives the same numbers.
# This cell runs only if PyTorch happens to be installed; nothing else in the tutorials needs it.

# %%
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

# %% [markdown]
# ## Summary
#
# * The forward pass records a graph: each result keeps a `Context` with its `Function`, its inputs
#   and the arrays its backward pass needs.
# * `backward()` visits the graph in reverse topological order and applies each `Function`'s local
#   chain rule; a tensor used several times receives the sum of its consumers' gradients.
# * A new operation is a `Function` with `forward` and `backward` on raw arrays.
# * Check every backward pass against central differences in float64 with a random upstream
#   gradient; an all-ones upstream gradient hides real bugs (notebook 3 shows a worse case).
#
# ## Exercises
#
# **Exercise 1 (chain rule by hand).** Logistic regression on one example with label 1 has the loss
# $L = -\log \sigma(\mathbf{w}\cdot\mathbf{x})$. Derive $\partial L/\partial \mathbf{w}$ by hand and
# check it against `backward()` for a random 5-vector $\mathbf{w}$ and $\mathbf{x}$, using minires
# operations (`*`, `.sum()`, `.sigmoid()`, `.log()`).

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
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


# %% [markdown]
# **Exercise 2 (your own Function).** Write a `Function` for SiLU (also called swish),
# $\operatorname{silu}(x) = x\,\sigma(x)$, derive its derivative, and verify it with `gradcheck`.
# Then introduce a deliberate mistake in the derivative and watch `gradcheck` fail.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
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

# %% [markdown]
# **Exercise 3 (why gradients must add).** Copy `my_backward` into a function `overwriting_backward`
# that *replaces* a pending gradient instead of adding to it
# (`pending[id(parent)] = g`). Find a small graph where it gives a wrong answer, and one where it
# still gives the right answer. What property of the graph decides?

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 3
# The answer goes wrong exactly when some tensor is consumed more than once (the graph is not a tree).
source = inspect.getsource(my_backward)
source = source.replace("def my_backward", "def overwriting_backward")
source = source.replace("pending[id(parent)] = pending.get(id(parent), 0) + g", "pending[id(parent)] = g")
namespace = {}
exec(source, globals(), namespace)  # defines overwriting_backward
overwriting_backward = namespace["overwriting_backward"]

p = leaf(3.0, "p")
print("p used three times, y = p*p + p: right", my_backward(p * p + p)["p"],
      "| overwriting", overwriting_backward(p * p + p)["p"])
q, r = leaf(3.0, "q"), leaf(2.0, "r")
print("each leaf used once, y = q*r + 1: right", my_backward(q * r + 1)["q"],
      "| overwriting", overwriting_backward(q * r + 1)["q"])
