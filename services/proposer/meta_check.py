"""A PyTorch child checked statement by statement while it is sampled, on meta tensors.

Why: a grammar says what may be written, not whether it runs. Under grammar v2 the 135M
embedded model wrote 0 of 24 children that build: sizes that do not fit (a GRU's
`input_size` against the view before it, a Linear's input after convolutions, a `view` to
a size the batch lacks), an int attribute called as a layer, one lazy layer applied to two
shapes. A local backend therefore checks each statement as soon as it is complete and,
when it cannot run, samples that statement again (grammar.Constraint,
backends/llamacpp.py): a search then spends its training on children that build.

How: the statements are interpreted, never executed. Each is parsed with `ast` and
evaluated by the small interpreter below, which knows only torch.nn's layers, torch.nn.
functional, a short list of torch functions and tensor methods, and computes on the meta
device: tensors there have shapes and no data, so a layer of a billion parameters costs
nothing, and no code of the child runs in the proposer. Integer arithmetic is bounded.
What the interpreter cannot judge (a construct it does not know) is accepted: the
trainer's own build and shape check stay the authority. (An operation without a meta
kernel raises NotImplementedError, a RuntimeError, and counts as a failure.)

A grammar asks for the check with a directive line (a Lark comment, so servers that take
the grammar whole ignore it):

    //! check: pytorch input=(2, 40) output=(2, 10)
"""

import ast
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_DIRECTIVE = re.compile(
    r"^//!\s*check:\s*pytorch\s+input=\(([\d,\s]+)\)\s+output=\(([\d,\s]+)\)\s*$", re.MULTILINE
)
# Bounds on what the interpreter computes with plain Python numbers and sequences.
MAX_NUMBER = 10**12
MAX_EXPONENT = 64
MAX_SEQUENCE = 4096
# The trainer's ceiling on a model's parameters (services/trainer/sandbox/base.py, Limits):
# a child over it is refused before it is built, so a layer that takes it over the ceiling
# (`nn.Linear(40000, 5000)`) is sampled again instead (a search may set a lower cap).
MAX_PARAMS = 20_000_000

# What a child may call beyond torch.nn's layers and torch.nn.functional.
TORCH_FUNCTIONS = frozenset(
    {
        *("cat", "stack", "flatten", "zeros", "ones", "zeros_like", "ones_like", "relu"),
        *("tanh", "sigmoid", "mean", "sum", "max", "min", "amax", "amin", "transpose"),
        *("reshape", "squeeze", "unsqueeze", "permute", "softmax", "log_softmax"),
    }
)
TENSOR_METHODS = frozenset(
    {
        *("view", "reshape", "flatten", "mean", "sum", "amax", "amin", "max", "min"),
        *("transpose", "permute", "unsqueeze", "squeeze", "size", "contiguous", "relu"),
        *("tanh", "sigmoid", "softmax", "log_softmax", "float", "chunk", "split", "expand"),
        *("t", "abs", "exp", "clamp", "view_as", "reshape_as"),
    }
)
TENSOR_ATTRIBUTES = frozenset({"shape", "device", "dtype", "ndim"})


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Spec:
    """What the child's `forward` takes and must return (a batch of the task's data)."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.input_shape or not self.output_shape:
            raise ValueError("a check needs an input and an output shape")
        if min(self.input_shape + self.output_shape) < 1:
            raise ValueError(f"shapes must be positive: {self}")

    @classmethod
    def of_grammar(cls, grammar_text: str) -> "Spec | None":
        """The grammar's `//! check:` directive, or None when it asks for no check."""
        match = _DIRECTIVE.search(grammar_text)
        return cls(_shape(match.group(1)), _shape(match.group(2))) if match else None


class Rejected(Exception):
    """The statement cannot run; the message says why."""


class CannotJudge(Exception):
    """The interpreter does not know this construct: the statement is accepted."""


@dataclass(frozen=True)
class SizeFix:
    """The input size a layer built in `__init__` must take to run on what `forward` gives
    it: the size a small model gets wrong (a Linear after convolutions, a GRU's input size
    against the view before it), computed as the lazy modules would compute it."""

    attribute: str  # the layer is `self.<attribute>`...
    position: int | None  # ...or the layer at this position in that nn.Sequential
    size: int  # its first argument (in_features, in_channels, num_features, input_size)...
    argument: int = 0  # ...or this one: 1 is a read-out Linear's out_features


@dataclass(frozen=True)
class Verdict:
    """The first failing statement among those not yet checked, or none."""

    statement: int = -1  # its index in the list checked; -1: they all run (or cannot be judged)
    reason: str = ""
    fix: SizeFix | None = None  # when the failure is a layer's input size

    @property
    def ok(self) -> bool:
        return self.statement < 0


def check(
    spec: Spec, init: Sequence[str], forward: Sequence[str] = (), first_new: int = 0
) -> Verdict:
    """Run `__init__`'s complete statements, then `forward`'s (those given), on meta tensors.

    `first_new` indexes the statements not yet checked, counted over `init` then `forward`:
    an older statement that fails was accepted before (the sampler gave up on it, or the
    interpreter could not judge it), so from there on nothing can be judged."""
    import torch

    interpreter = _Interpreter(spec)
    statements = [(1, s) for s in init] + [(2, s) for s in forward]
    # (torch warns about what the child wrote, such as a GRU's dropout with one layer: the
    # trainer reports what matters, and the proposer's log stays quiet.)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, (phase, statement) in enumerate(statements):
            try:
                interpreter.run(statement, phase)
                continue
            except Rejected as e:
                reason = str(e)
            # (NotImplementedError, a RuntimeError, is rejected here like the others.)
            except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as e:
                first_line = (str(e).strip().splitlines() or [""])[0][:200]
                reason = f"{type(e).__name__}: {first_line}"
            except (CannotJudge, ArithmeticError, RecursionError):
                return Verdict()
            # (An older statement that fails was accepted before: nothing more to judge.)
            return Verdict(index, reason, interpreter.fix) if index >= first_new else Verdict()
    return Verdict()


# The layers whose first argument is their input size, as `__init__` writes them.
SIZED_LAYERS = frozenset({"Linear", "Conv1d", "BatchNorm1d", "LayerNorm", "GRU", "LSTM", "RNN"})


def patch_statement(statement: str, fix: SizeFix) -> str | None:
    """`statement` (`self.fc = nn.Linear(100, 10)`) with the layer's first argument (or the
    one `fix.argument` says) set to `fix.size`, or None where it does not build that layer
    with a positional size there."""
    indent = statement[: len(statement) - len(statement.lstrip())]
    try:
        tree = ast.parse(statement.strip())
    except SyntaxError:
        return None
    node = tree.body[0] if len(tree.body) == 1 else None
    if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
        return None
    call = node.value
    if fix.position is not None:
        if _layer_name(call) != "Sequential" or fix.position >= len(call.args):
            return None
        inner = call.args[fix.position]
        if not isinstance(inner, ast.Call):
            return None
        call = inner
    sized = SIZED_LAYERS if fix.argument == 0 else {"Linear"}
    if _layer_name(call) not in sized or len(call.args) <= fix.argument:
        return None
    size = call.args[fix.argument]
    assert size.end_lineno is not None and size.end_col_offset is not None
    data = statement.strip().encode()
    starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    begin = starts[size.lineno - 1] + size.col_offset
    end = starts[size.end_lineno - 1] + size.end_col_offset
    patched = data[:begin] + str(fix.size).encode() + data[end:]
    trailing = statement[len(statement.rstrip()) :]
    return indent + patched.decode() + trailing


def _layer_name(call: ast.Call) -> str:
    func = call.func
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "nn"
    ):
        return func.attr
    return ""


class _Namespace:
    """`self`, `nn`, `F` or `torch`: a name whose attributes the interpreter resolves."""

    def __init__(self, name: str) -> None:
        self.name = name


class _Interpreter:
    def __init__(self, spec: Spec) -> None:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        self.torch, self.nn, self.F = torch, nn, F
        self.spec = spec
        self.attributes: dict[str, Any] = {}
        self.locals: dict[int, dict[str, Any]] = {1: {}, 2: {}}
        self.globals = {name: _Namespace(name) for name in ("self", "nn", "F", "torch")}
        self.fix: SizeFix | None = None  # the first wrong input size the statement met
        # The Linear layer (attribute, position in its nn.Sequential) that made a tensor,
        # by the tensor's id: a read-out of the wrong width is one to fix.
        self.made_by: dict[int, tuple[str, int | None]] = {}

    # ------------------------------------------------------------ statements

    def run(self, statement: str, phase: int) -> None:
        text = statement.strip()
        if not text or text.startswith(("def ", '"""', "super()")):
            return
        try:
            tree = ast.parse(text)
        except SyntaxError as e:  # a keyword as a name (`for = 0`): the grammar allows it
            raise Rejected(f"not Python: {e.msg}") from e
        if len(tree.body) != 1:
            raise CannotJudge("not one statement")
        node = tree.body[0]
        self.phase, self.fix = phase, None
        if phase == 2:  # forward's argument: a batch of the task's inputs
            self.locals[2].setdefault("x", self.torch.empty(self.spec.input_shape))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # a docstring
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            self._assign(node.targets[0], self.eval(node.value))
        elif isinstance(node, ast.Return) and node.value is not None and phase == 2:
            self._returned(self.eval(node.value))
        else:
            raise CannotJudge(type(node).__name__)

    def _assign(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.locals[self.phase][target.id] = value
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            self.attributes[target.attr] = value
            if isinstance(value, self.nn.Module):
                self._check_size()
        elif isinstance(target, ast.Tuple):
            if not isinstance(value, (tuple, list)):
                raise Rejected(f"cannot unpack {type(value).__name__} into {len(target.elts)}")
            if len(value) != len(target.elts):
                raise Rejected(f"{len(value)} values to unpack into {len(target.elts)} names")
            for element, item in zip(target.elts, value, strict=True):
                self._assign(element, item)
        else:
            raise CannotJudge("assignment target")

    def _check_size(self) -> None:
        """Rejects the layer just assigned when the model's parameters pass MAX_PARAMS."""
        from torch.nn.parameter import is_lazy

        layers = [v for v in self.attributes.values() if isinstance(v, self.nn.Module)]
        # (By identity: a layer assigned to two attributes is counted once.)
        params = {id(p): p for layer in layers for p in layer.parameters() if not is_lazy(p)}
        count = sum(p.numel() for p in params.values())
        if count > MAX_PARAMS:
            raise Rejected(f"{count:,} parameters, over the trainer's cap of {MAX_PARAMS:,}")

    def _returned(self, value: Any) -> None:
        expected = self.spec.output_shape
        if not isinstance(value, self.torch.Tensor):
            raise Rejected(f"forward returns a {type(value).__name__}, not a tensor of {expected}")
        if tuple(value.shape) != expected:
            rows = tuple(value.shape[:-1]) == expected[:-1]
            if rows and id(value) in self.made_by and self.fix is None:
                self.fix = SizeFix(*self.made_by[id(value)], expected[-1], argument=1)
            raise Rejected(
                f"forward returns shape {tuple(value.shape)} for an input of "
                f"{self.spec.input_shape}; expected {expected}"
            )
        if not value.is_floating_point():
            raise Rejected(f"forward returns {value.dtype}, not floating point scores")

    # ------------------------------------------------------------ expressions

    def eval(self, node: ast.expr) -> Any:
        method: Callable[[Any], Any] | None = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise CannotJudge(type(node).__name__)
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (int, float, bool)) or node.value is None:
            return node.value
        raise CannotJudge("constant")

    def _Name(self, node: ast.Name) -> Any:
        local = self.locals[self.phase]
        if node.id in local:
            return local[node.id]
        if node.id in self.globals:
            return self.globals[node.id]
        raise Rejected(f"name {node.id!r} is not defined")

    def _Attribute(self, node: ast.Attribute) -> Any:
        owner, name = self.eval(node.value), node.attr
        if isinstance(owner, _Namespace):
            return self._namespace_attribute(owner.name, name)
        if isinstance(owner, self.torch.Tensor):
            if name in TENSOR_ATTRIBUTES:
                return getattr(owner, name)
            if name in TENSOR_METHODS:
                return getattr(owner, name)
            if not hasattr(owner, name):
                raise Rejected(f"a tensor has no attribute {name!r}")
            raise CannotJudge(f"tensor attribute {name}")
        if isinstance(owner, (int, float, bool, tuple, list)) or owner is None:
            raise Rejected(f"{type(owner).__name__} has no attribute {name!r}")
        if isinstance(owner, self.nn.Module):
            # A layer's sizes (`self.rnn.hidden_size`) and tensors; not its methods.
            if name.startswith("_") or not hasattr(owner, name):
                raise Rejected(f"{type(owner).__name__} has no attribute {name!r}")
            value = getattr(owner, name)
            if isinstance(value, (int, float, bool, tuple, self.torch.Tensor)):
                return value
        raise CannotJudge(f"attribute of {type(owner).__name__}")

    def _namespace_attribute(self, namespace: str, name: str) -> Any:
        if namespace == "self":
            if name not in self.attributes:
                raise Rejected(f"self.{name} is not assigned")
            return self.attributes[name]
        if namespace == "nn":
            layer = getattr(self.nn, name, None)
            if isinstance(layer, type) and issubclass(layer, self.nn.Module):
                return layer
        elif namespace == "F":
            function = getattr(self.F, name, None)
            if callable(function) and not name.startswith("_"):
                return function
        elif namespace == "torch":
            if name in TORCH_FUNCTIONS:
                return getattr(self.torch, name)
            if name in ("float32", "float", "long", "int64"):
                return getattr(self.torch, name)
        raise CannotJudge(f"{namespace}.{name}")

    def _Call(self, node: ast.Call) -> Any:
        function = self.eval(node.func)
        args: list[Any] = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise CannotJudge("*args")
            args.append(self.eval(arg))
        kwargs = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise CannotJudge("**kwargs")
            kwargs[keyword.arg] = self.eval(keyword.value)
        kwargs.pop("device", None)  # everything is made on the meta device
        if isinstance(function, (int, float, bool, tuple, list)) or function is None:
            raise Rejected(f"{type(function).__name__} is not callable")
        if isinstance(function, self.torch.Tensor):
            raise Rejected("a tensor is not callable")
        if not callable(function):
            raise CannotJudge("call")
        names = [n for n, v in self.attributes.items() if v is function]
        if names and args and not kwargs:
            return self._call_layer(names[-1], function, args)
        return self._apply(function, args, kwargs)

    def _apply(self, function: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if isinstance(function, self.nn.RNNBase):
            return self._recurrent(function, args, kwargs)
        return function(*args, **kwargs)

    def _call_layer(self, name: str, layer: Any, args: list[Any]) -> Any:
        """`self.<name>(...)`, noting the first input size that does not fit a layer (in an
        nn.Sequential, layer by layer)."""
        if not isinstance(layer, self.nn.Sequential) or len(args) != 1:
            self._note_size(name, None, layer, args[0])
            return self._made(self._apply(layer, args, {}), layer, name, None)
        x = args[0]
        for position, inner in enumerate(layer):
            self._note_size(name, position, inner, x)
            x = self._made(self._apply(inner, [x], {}), inner, name, position)
        return x

    def _made(self, y: Any, layer: Any, name: str, position: int | None) -> Any:
        """`y`, noted as made by `layer` when that is a Linear (its width can be fixed)."""
        if type(layer) is self.nn.Linear and isinstance(y, self.torch.Tensor):
            self.made_by[id(y)] = (name, position)
        return y

    def _note_size(self, name: str, position: int | None, layer: Any, x: Any) -> None:
        nn = self.nn
        if self.fix is not None or not isinstance(x, self.torch.Tensor) or x.dim() == 0:
            return
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin):
            return
        have = need = 0
        if isinstance(layer, nn.Linear):
            have, need = layer.in_features, x.shape[-1]
        elif isinstance(layer, nn.Conv1d) and x.dim() == 3 and layer.groups == 1:
            have, need = layer.in_channels, x.shape[1]
        elif isinstance(layer, nn.BatchNorm1d) and x.dim() in (2, 3):
            have, need = layer.num_features, x.shape[1]
        elif isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) == 1:
            have, need = layer.normalized_shape[0], x.shape[-1]
        elif isinstance(layer, nn.RNNBase) and x.dim() in (2, 3):
            have, need = layer.input_size, x.shape[-1]
        if have != need:
            self.fix = SizeFix(name, position, int(need))

    def _recurrent(self, rnn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """A GRU, LSTM or RNN's outputs by its shape rules: torch runs a recurrent layer on
        the meta device step by step (0.3 s for 40 steps), too slow for every statement."""
        empty = self.torch.empty
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, self.torch.Tensor) or x.dim() not in (2, 3):
            raise Rejected(f"{type(rnn).__name__} takes a 2-D or 3-D tensor")
        if x.shape[-1] != rnn.input_size:
            raise Rejected(
                f"{type(rnn).__name__}: input.size(-1) must be equal to input_size. "
                f"Expected {rnn.input_size}, got {x.shape[-1]}"
            )
        directions = 2 if rnn.bidirectional else 1
        size = rnn.proj_size or rnn.hidden_size
        steps, batch = (x.shape[0], None) if x.dim() == 2 else (x.shape[1], x.shape[0])
        if x.dim() == 3 and not rnn.batch_first:
            steps, batch = x.shape[0], x.shape[1]
        lead = () if batch is None else (batch,)
        out = (steps, directions * size) if batch is None else (batch, steps, directions * size)
        if x.dim() == 3 and not rnn.batch_first:
            out = (steps, batch, directions * size)
        layers = directions * rnn.num_layers
        state = (layers, *lead, size)
        cell = (layers, *lead, rnn.hidden_size)
        lstm = isinstance(rnn, self.nn.LSTM)
        given = args[1] if len(args) > 1 else kwargs.get("hx")
        if given is not None:
            expected = [state, cell] if lstm else [state]
            hidden = list(given) if lstm and isinstance(given, (tuple, list)) else [given]
            if len(hidden) != len(expected):
                raise Rejected(f"{type(rnn).__name__}: the initial state has the wrong form")
            for tensor, shape in zip(hidden, expected, strict=True):
                if not isinstance(tensor, self.torch.Tensor) or tuple(tensor.shape) != shape:
                    got = tuple(tensor.shape) if isinstance(tensor, self.torch.Tensor) else tensor
                    raise Rejected(f"{type(rnn).__name__}: expected hidden size {shape}, got {got}")
        final = (empty(state), empty(cell)) if lstm else empty(state)
        return empty(out), final

    def _BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.eval(node.left), self.eval(node.right)
        operator = type(node.op).__name__
        numbers = all(isinstance(v, (int, float)) for v in (left, right))
        too_big = numbers and (abs(right) > MAX_EXPONENT or abs(left) > MAX_NUMBER)
        if operator == "Pow" and too_big:
            raise Rejected(f"{left} ** {right} is out of range")
        if operator == "Mult" and any(isinstance(v, (tuple, list)) for v in (left, right)):
            count = right if isinstance(left, (tuple, list)) else left
            if not isinstance(count, int) or count > MAX_SEQUENCE:
                raise Rejected("sequence repeated out of range")
        if operator not in _OPERATORS:
            raise CannotJudge(operator)
        result = _OPERATORS[operator](left, right)
        if isinstance(result, (int, float)) and (
            abs(result) > MAX_NUMBER or (isinstance(result, float) and not math.isfinite(result))
        ):
            raise Rejected(f"a number out of range ({operator})")
        return result

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.eval(node.operand)
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return +value
        raise CannotJudge(type(node.op).__name__)

    def _Subscript(self, node: ast.Subscript) -> Any:
        return self.eval(node.value)[self.eval(node.slice)]

    def _Slice(self, node: ast.Slice) -> slice:
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if p is None else self.eval(p) for p in parts))

    def _Tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self.eval(e) for e in node.elts)

    def _List(self, node: ast.List) -> list[Any]:
        return [self.eval(e) for e in node.elts]


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mult": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "FloorDiv": lambda a, b: a // b,
    "Mod": lambda a, b: a % b,
    "Pow": lambda a, b: a**b,
    "MatMult": lambda a, b: a @ b,
}
