"""Hand-written code mutations: the operator of the `mutation` baseline, with no language model.

The baseline is regularised evolution (Real et al. 2019). Its children come from small random
edits of a parent's PyTorch source: a layer width, an activation, a convolution kernel, a dropout
rate or a hidden layer. Edits are made on the syntax tree, so every child parses, and each one is
chosen to keep the model's shapes consistent where it can tell; the trainer rejects the rest.
"""

import ast
import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import TypeGuard, cast

KINDS = ("width", "activation", "kernel", "dropout", "depth")
FIXED_SIZES = frozenset({10, 40})  # MNIST-1D's class count and input length never change
WIDTH_FACTORS = (0.5, 0.75, 1.25, 1.5, 2.0)
MIN_WIDTH = 4  # smaller integers in size positions are usually structural (1 channel, 2 ways)
KERNELS = (3, 5, 7)
DROPOUTS = (0.0, 0.1, 0.2, 0.3)

# Where each layer takes its sizes: (positional index, keyword).
_SIZE_ARGS: dict[str, tuple[tuple[int, str], ...]] = {
    "torch.nn.Linear": ((0, "in_features"), (1, "out_features")),
    "torch.nn.Conv1d": ((0, "in_channels"), (1, "out_channels")),
    "torch.nn.GRU": ((0, "input_size"), (1, "hidden_size")),
    "torch.nn.LSTM": ((0, "input_size"), (1, "hidden_size")),
    "torch.nn.RNN": ((0, "input_size"), (1, "hidden_size")),
    "torch.nn.BatchNorm1d": ((0, "num_features"),),
    "torch.nn.LayerNorm": ((0, "normalized_shape"),),
}
_MODULE_ACTS = ("ReLU", "GELU", "Tanh", "SiLU", "ELU")
_FUNCTION_ACTS = ("relu", "gelu", "silu", "elu", "tanh")
_TORCH_ACTS = ("relu", "tanh")  # the ones `torch` itself exports; the rest live in F
# Programs usually get these names from the task's prompt header even when they omit imports.
_DEFAULT_ALIASES = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional"}

Site = Callable[[random.Random], str | None]


@dataclass(frozen=True)
class Mutation:
    code: str  # the mutated program source
    description: str  # starts with its kind, e.g. "width 25 -> 32", "kernel 5 -> 3"


def mutate(code: str, rng: random.Random, attempts: int = 20) -> Mutation | None:
    """One random hand-written mutation of a PyTorch program; None when none applies."""
    try:
        base = ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        return None  # not a program we can edit: the caller draws another parent
    original = _Program(base)
    kinds = [kind for kind in KINDS if _FINDERS[kind](original)]
    for _ in range(attempts if kinds else 0):
        program = _Program(base)  # a fresh tree each try, so a failed edit leaves no trace
        sites = _FINDERS[rng.choice(kinds)](program)
        description = rng.choice(sites)(rng)
        if description is None:
            continue
        child = ast.unparse(ast.fix_missing_locations(program.tree))
        if child != base:
            return Mutation(code=child, description=description)
    return None


class _Program:
    """A parsed program with what the finders need: import aliases and each node's parent."""

    def __init__(self, source: str) -> None:
        self.tree = ast.parse(source)
        self.aliases = dict(_DEFAULT_ALIASES)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    self.aliases[alias.asname or top] = alias.name if alias.asname else top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        self.parents = {c: p for p in ast.walk(self.tree) for c in ast.iter_child_nodes(p)}
        self.calls = [node for node in ast.walk(self.tree) if isinstance(node, ast.Call)]

    def name(self, node: ast.AST) -> str | None:
        """The dotted name a call resolves to through the imports: `nn.ReLU()` -> torch.nn.ReLU."""
        expr = node.func if isinstance(node, ast.Call) else node
        parts: list[str] = []
        while isinstance(expr, ast.Attribute):
            parts.append(expr.attr)
            expr = expr.value
        if not isinstance(expr, ast.Name):
            return None
        parts.append(self.aliases.get(expr.id, expr.id))
        return ".".join(reversed(parts))

    def is_call(self, node: ast.AST | None, *names: str) -> TypeGuard[ast.Call]:
        return isinstance(node, ast.Call) and self.name(node) in names

    def module_act(self, node: ast.AST | None) -> TypeGuard[ast.Call]:
        """`nn.ReLU()` and kin, spelled as attributes so a swap can reuse the `nn.` prefix."""
        names = [f"torch.nn.{a}" for a in _MODULE_ACTS]
        return self.is_call(node, *names) and isinstance(node.func, ast.Attribute)

    def function_act(self, node: ast.AST | None) -> TypeGuard[ast.Call]:
        """`F.relu(x)`, `torch.tanh(x)` and kin."""
        names = [f"torch.nn.functional.{a}" for a in _FUNCTION_ACTS]
        names += [f"torch.{a}" for a in _TORCH_ACTS]
        return (
            self.is_call(node, *names) and isinstance(node.func, ast.Attribute) and bool(node.args)
        )

    def sequentials(self) -> list[ast.Call]:
        return [
            c
            for c in self.calls
            if self.name(c) == "torch.nn.Sequential" and isinstance(c.func, ast.Attribute)
        ]


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    starred = any(isinstance(a, ast.Starred) for a in call.args[: index + 1])
    if index < len(call.args) and not starred:  # after *args, positions are unknown
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _is_int(node: ast.AST | None) -> TypeGuard[ast.Constant]:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _number(node: ast.AST | None) -> float | None:
    """An int or float literal's value (None for anything else, True and False included)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return cast(float, node.value)
    return None


def _key(node: ast.AST) -> str | None:
    """A simple variable's name: `hidden` or `self.hidden`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _factors(node: ast.expr) -> Iterator[ast.Constant]:
    """Integer constants that multiply a size: both of `64 * 5`, but no part of `64 + 5`."""
    if _is_int(node):
        yield node
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        yield from _factors(node.left)
        yield from _factors(node.right)


def _width_sites(p: _Program) -> list[Site]:
    """One site per layer size; sizes are constants in size arguments or variables fed to them."""
    sizes: list[ast.expr] = []
    shapes: list[ast.expr] = []  # .view/.reshape arguments: flatten sizes follow the width
    for call in p.calls:
        spec = _SIZE_ARGS.get(p.name(call) or "")
        if spec:
            sizes += [a for i, kw in spec if (a := _arg(call, i, kw)) is not None]
        elif isinstance(call.func, ast.Attribute) and call.func.attr in ("view", "reshape"):
            shapes += call.args
    used = {k for expr in sizes for node in ast.walk(expr) if (k := _key(node))}
    settings: list[ast.expr] = []
    for node in ast.walk(p.tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            if _key(node.targets[0]) in used:
                settings.append(node.value)
        elif isinstance(node, ast.AnnAssign) and node.value and _key(node.target) in used:
            settings.append(node.value)
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = zip(
                positional[len(positional) - len(node.defaults) :], node.defaults, strict=True
            )
            for arg, default in [*pairs, *zip(node.kwonlyargs, node.kw_defaults, strict=True)]:
                if default is not None and arg.arg in used:
                    settings.append(default)
    chosen = {cast(int, n.value) for n in sizes + settings if _is_int(n)}
    values = sorted({v for v in chosen if v >= MIN_WIDTH} - FIXED_SIZES)
    targets = [n for n in settings if _is_int(n)]
    targets += [c for expr in sizes + shapes for c in _factors(expr)]
    return [partial(_scale, targets, value) for value in values]


def _scale(targets: list[ast.Constant], value: int, rng: random.Random) -> str | None:
    # Never below MIN_WIDTH: a smaller size is not a candidate, so the lineage would be stuck.
    scaled = {max(MIN_WIDTH, int(value * f + 0.5)) for f in WIDTH_FACTORS}
    scaled -= FIXED_SIZES | {value}
    if not scaled:
        return None
    new = rng.choice(sorted(scaled))
    for node in targets:
        if node.value == value:
            node.value = new
    return f"width {value} -> {new}"


def _activation_sites(p: _Program) -> list[Site]:
    modules: list[Site] = [partial(_swap_module, c) for c in p.calls if p.module_act(c)]
    return modules + [partial(_swap_function, p, c) for c in p.calls if p.function_act(c)]


def _swap_module(call: ast.Call, rng: random.Random) -> str:
    func = call.func
    assert isinstance(func, ast.Attribute)
    old = func.attr
    func.attr = rng.choice([a for a in _MODULE_ACTS if a != old])
    call.args, call.keywords = [], []  # inplace=True, alpha=... do not carry across
    return f"activation {old} -> {func.attr}"


def _functional(p: _Program, func: ast.Attribute) -> ast.expr:
    """An expression for torch.nn.functional built from the base of `F.relu` or `torch.relu`."""
    if p.name(func.value) == "torch":
        return ast.Attribute(ast.Attribute(func.value, "nn", ast.Load()), "functional", ast.Load())
    return func.value


def _swap_function(p: _Program, call: ast.Call, rng: random.Random) -> str:
    func = call.func
    assert isinstance(func, ast.Attribute)
    new = rng.choice([a for a in _FUNCTION_ACTS if a != func.attr])
    torch_base = p.name(func.value) == "torch"
    base = func.value if torch_base and new in _TORCH_ACTS else _functional(p, func)
    old = ast.unparse(func)
    call.func = ast.Attribute(base, new, ast.Load())
    call.args, call.keywords = call.args[:1], []
    return f"activation {old} -> {ast.unparse(call.func)}"


def _kernel_sites(p: _Program) -> list[Site]:
    """Conv1d kernels; those whose padding keeps the length are three times as likely."""
    sites: list[Site] = []
    for call in p.calls:
        kernel = _arg(call, 2, "kernel_size")
        if p.name(call) != "torch.nn.Conv1d" or not _is_int(kernel) or (_number(kernel) or 0) < 3:
            continue
        size, padding = cast(int, kernel.value), _arg(call, 4, "padding")
        keeps = isinstance(padding, ast.Constant) and padding.value in ("same", size // 2)
        sites += [partial(_set_kernel, kernel, size, padding)] * (3 if keeps else 1)
    return sites


def _set_kernel(
    kernel: ast.Constant, old: int, padding: ast.expr | None, rng: random.Random
) -> str:
    new = kernel.value = rng.choice([k for k in KERNELS if k != old])
    if _is_int(padding) and padding.value == old // 2:
        padding.value = new // 2
    return f"kernel {old} -> {new}"


def _dropout_sites(p: _Program) -> list[Site]:
    """Change an existing rate, add nn.Dropout after a Sequential's activation, or wrap F.relu."""
    sites: list[Site] = []
    for call in p.calls:
        for name, index in (("torch.nn.Dropout", 0), ("torch.nn.functional.dropout", 1)):
            rate = _arg(call, index, "p")
            if p.name(call) == name and (rate is None or _number(rate) is not None):
                sites.append(partial(_set_rate, call, index))
    for seq in p.sequentials():
        for i, layer in enumerate(seq.args):
            following = seq.args[i + 1] if i + 1 < len(seq.args) else None
            if p.module_act(layer) and not p.is_call(following, "torch.nn.Dropout"):
                sites.append(partial(_insert_dropout, seq, i + 1))
    methods = [f for f in ast.walk(p.tree) if isinstance(f, ast.FunctionDef) and f.args.args]
    for method in methods:
        if method.args.args[0].arg != "self":
            continue  # the wrapper reads self.training
        for node in ast.walk(method):
            wrapped = p.is_call(p.parents.get(node), "torch.nn.functional.dropout")
            if p.function_act(node) and not wrapped:
                sites.append(partial(_wrap_dropout, p, node))
    return sites


def _set_rate(call: ast.Call, index: int, rng: random.Random) -> str:
    rate = _arg(call, index, "p")
    old = _number(rate) if rate else 0.5  # torch's default
    new = rng.choice([r for r in DROPOUTS if r != old])
    if isinstance(rate, ast.Constant):
        rate.value = new
    else:
        call.keywords.append(ast.keyword("p", ast.Constant(new)))
    return f"dropout {old} -> {new}"


def _insert_dropout(seq: ast.Call, index: int, rng: random.Random) -> str:
    assert isinstance(seq.func, ast.Attribute)
    rate = rng.choice(DROPOUTS[1:])
    func = ast.Attribute(copy.deepcopy(seq.func.value), "Dropout", ast.Load())
    seq.args.insert(index, ast.Call(func, [ast.Constant(rate)], []))
    return f"dropout + {rate} in Sequential"


def _wrap_dropout(p: _Program, act: ast.Call, rng: random.Random) -> str:
    """F.relu(h) -> F.dropout(F.relu(h), p=0.1, training=self.training)."""
    assert isinstance(act.func, ast.Attribute)
    rate = rng.choice(DROPOUTS[1:])
    func = ast.Attribute(copy.deepcopy(_functional(p, act.func)), "dropout", ast.Load())
    training = ast.Attribute(ast.Name("self", ast.Load()), "training", ast.Load())
    keywords = [ast.keyword("p", ast.Constant(rate)), ast.keyword("training", training)]
    inner = ast.Call(act.func, act.args, act.keywords)
    act.func, act.args, act.keywords = func, [inner], keywords  # in place: no parent to edit
    return f"dropout + {rate} after {ast.unparse(inner.func)}"


def _depth_sites(p: _Program) -> list[Site]:
    """In a Sequential, repeat a hidden Linear(h, h) + activation, or drop such a pair."""
    sites: list[Site] = []
    for seq in p.sequentials():
        for i, (layer, act) in enumerate(pairwise(seq.args)):
            if not (p.is_call(layer, "torch.nn.Linear") and p.module_act(act)):
                continue
            inputs, outputs = _arg(layer, 0, "in_features"), _arg(layer, 1, "out_features")
            if outputs is not None:
                sites.append(partial(_add_layer, seq, i, outputs))
            if inputs and outputs and ast.dump(inputs) == ast.dump(outputs) and len(seq.args) > 2:
                sites.append(partial(_drop_layer, seq, i))
    return sites


def _add_layer(seq: ast.Call, index: int, width: ast.expr, rng: random.Random) -> str:
    linear = seq.args[index]
    assert isinstance(linear, ast.Call)
    new = ast.Call(copy.deepcopy(linear.func), [copy.deepcopy(width), copy.deepcopy(width)], [])
    seq.args[index + 2 : index + 2] = [new, copy.deepcopy(seq.args[index + 1])]
    return f"depth +1 {ast.unparse(new)}"


def _drop_layer(seq: ast.Call, index: int, rng: random.Random) -> str:
    removed = ast.unparse(seq.args[index])
    del seq.args[index : index + 2]
    return f"depth -1 {removed}"


_FINDERS: dict[str, Callable[[_Program], list[Site]]] = {
    "width": _width_sites,
    "activation": _activation_sites,
    "kernel": _kernel_sites,
    "dropout": _dropout_sites,
    "depth": _depth_sites,
}
