"""Small, structurally valid model files that declare far more than they hold, or that a careless loader
misreads: the red team's file classes, for tests/test_io_fuzz.py and ``benchmarks/fuzz.py --files``.

Each builder takes a folder and a NumPy random generator and returns a :class:`Hostile` case: the
paths to load, the error type and a pattern the message must match (None: the file must load).
:func:`run` loads one case and reports what came out, how long it took and the peak of memory
traced while it ran.
"""

import json
import time
import tracemalloc
import zipfile
from dataclasses import dataclass, field

import numpy as np

from lrpnumpy.errors import LRPError, ModelFormatError, UnsupportedLayerError

BIG = 300_000_000  # elements a few bytes of a file declare: 1.2 GB as float32


@dataclass
class Hostile:
    name: str
    load: object           # a function of no arguments that loads the file
    error: type = None     # the LRPError subclass expected, None: it must load
    match: str = ""        # a regular expression the message must match
    size: int = 0          # the file's size in bytes
    extra: dict = field(default_factory=dict)


# ----- ONNX -----

def _onnx_model(nodes, inits=(), in_shape=(1, 4), opset=13, out="y"):
    from onnx import TensorProto, helper
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ints(name, values):
    from onnx import helper, numpy_helper
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))


def _onnx_case(d, name, model, error, match, **kwargs):
    from lrpnumpy.io import load_onnx
    path = d / f"{name}.onnx"
    data = model.SerializeToString()
    path.write_bytes(data)
    return Hostile(name, lambda: load_onnx(str(path), **kwargs), error, match, len(data))


def onnx_reshape_target(d, rng):
    """A ConstantOfShape of 3e8 int64 values as a Reshape target (today: turned into a list of Python ints)."""
    from onnx import helper
    n = int(rng.choice([BIG, 10 ** 6]))
    nodes = [_ints("s", [n]), helper.make_node("ConstantOfShape", ["s"], ["t"], value=_int_value(1)),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="reshape")]
    match = f"'reshape' \\(Reshape\\): the target shape holds {n} values"
    return _onnx_case(d, "onnx_reshape_target", _onnx_model(nodes), ModelFormatError, match)


def _int_value(v):
    from onnx import numpy_helper
    return numpy_helper.from_array(np.array([v], np.int64))


def onnx_unsqueeze_axes(d, rng):
    """A constant weight unsqueezed along a ConstantOfShape's 1e6 axes."""
    from onnx import helper, numpy_helper
    nodes = [_ints("s", [10 ** 6]), helper.make_node("ConstantOfShape", ["s"], ["axes"], value=_int_value(0)),
             helper.make_node("Unsqueeze", ["w", "axes"], ["w2"], name="unsq"),
             helper.make_node("MatMul", ["x", "w2"], ["y"])]
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")]
    return _onnx_case(d, "onnx_unsqueeze_axes", _onnx_model(nodes, inits), ModelFormatError,
                      "'unsq' \\(Unsqueeze\\): its axes input holds 1000000 values")


def onnx_shape_of_shape(d, rng):
    """A ConstantOfShape whose shape input is another ConstantOfShape of 3e8 (or 1e6) values."""
    from onnx import helper
    n = int(rng.choice([BIG, 10 ** 6]))
    nodes = [_ints("s", [n]), helper.make_node("ConstantOfShape", ["s"], ["s2"], value=_int_value(1)),
             helper.make_node("ConstantOfShape", ["s2"], ["w"], name="outer"),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    match = f"'outer' \\(ConstantOfShape\\): its shape input holds {n} values"
    return _onnx_case(d, "onnx_shape_of_shape", _onnx_model(nodes), ModelFormatError, match)


def onnx_gemm_weight(d, rng):
    """A ConstantOfShape of 3 x 2**28 (or another shape past the cap) as a Gemm weight (today: copied, up to
    gigabytes)."""
    from onnx import helper
    rows = int(rng.choice([3, 1, 2 ** 10, 2 ** 31 - 1]))
    cols = int(2 ** 28 // rows + 1 + rng.integers(2 ** 20)) if rows != 3 else 2 ** 28
    nodes = [_ints("s", [rows, cols]), helper.make_node("ConstantOfShape", ["s"], ["w"], name="cos"),
             helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transB=1)]
    return _onnx_case(d, "onnx_gemm_weight", _onnx_model(nodes, in_shape=(1, cols)), ModelFormatError,
                      f"'gemm' \\(Gemm\\): B 'w' of shape \\({rows}, {cols}\\) declares {rows * cols} values")


def onnx_many_weights(d, rng):
    """Three weights, each under the cap, together over it (max_elements=1000)."""
    from onnx import helper
    nodes = [_ints("s", [20, 20])]
    x = "x"
    for i in range(3):
        nodes += [helper.make_node("ConstantOfShape", ["s"], [f"w{i}"]),
                  helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}")]
        x = f"h{i}"
    nodes.append(helper.make_node("Relu", [x], ["y"]))
    return _onnx_case(d, "onnx_many_weights", _onnx_model(nodes, in_shape=(1, 20)), ModelFormatError,
                      "'mm2' \\(MatMul\\): B 'w2' of shape \\(20, 20\\) brings the network's weights to 1200",
                      max_elements=1000)


def onnx_declared_initializer(d, rng):
    """An initializer declaring 2**40 values and holding none."""
    from onnx import TensorProto, helper
    dims = [[2 ** 20, 2 ** 20], [2 ** 62, 2 ** 62, 4], [-1, 4], [2 ** 28 + 1]][int(rng.integers(4))]
    init = TensorProto(name="w", data_type=int(rng.choice([TensorProto.FLOAT, TensorProto.DOUBLE,
                                                           TensorProto.INT64])), dims=dims)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    match = "has negative dimensions" if dims[0] < 0 else "has a dimension over 2147483647" if dims[0] > 2 ** 31 \
        else f"declares {np.prod(dims, dtype=object)} values"
    return _onnx_case(d, "onnx_declared_initializer", _onnx_model(nodes, [init]), ModelFormatError,
                      f"initializer 'w': the tensor {match}")


def onnx_duplicate_initializer(d, rng):
    """Two initializers named W (today the last wins)."""
    from onnx import helper, numpy_helper
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "W"),
             numpy_helper.from_array(-np.ones((4, 3), np.float32), "W")]
    return _onnx_case(d, "onnx_duplicate_initializer",
                      _onnx_model([helper.make_node("MatMul", ["x", "W"], ["y"])], inits), ModelFormatError,
                      "initializer 'W' is defined twice")


def onnx_foreign_domain(d, rng):
    """A Gemm of domain evil.domain (today read as ONNX's Gemm)."""
    from onnx import helper, numpy_helper
    node = helper.make_node("Gemm", ["x", "W"], ["y"], name="evil", domain="evil.domain", transB=1)
    model = _onnx_model([node], [numpy_helper.from_array(np.ones((3, 4), np.float32), "W")])
    model.opset_import.append(helper.make_opsetid("evil.domain", 1))
    return _onnx_case(d, "onnx_foreign_domain", model, UnsupportedLayerError,
                      "'evil' \\(Gemm\\): operator of domain 'evil.domain'")


def onnx_pool_pads(d, rng):
    """An average (or max) pool with pads >= kernel: windows wholly in the padding."""
    from onnx import helper
    op = str(rng.choice(["AveragePool", "MaxPool"]))
    pads = [int(p) for p in rng.choice([[2, 0, 0, 0], [0, 0, 2, 2], [3, 3, 3, 3]])]
    node = helper.make_node(op, ["x"], ["y"], name="pool", kernel_shape=[2, 2], pads=pads,
                            **({"count_include_pad": 0} if op == "AveragePool" else {}))
    return _onnx_case(d, "onnx_pool_pads", _onnx_model([node], in_shape=(1, 1, 4, 4)), UnsupportedLayerError,
                      f"'pool' \\({op}\\): pads .* must be smaller than the kernel")


def onnx_redefined_output(d, rng):
    """A node writing a value an initializer already defines."""
    from onnx import helper, numpy_helper
    nodes = [helper.make_node("Relu", ["x"], ["W"], name="again"), helper.make_node("MatMul", ["W", "W"], ["y"])]
    model = _onnx_model(nodes, [numpy_helper.from_array(np.ones((4, 4), np.float32), "W")])
    return _onnx_case(d, "onnx_redefined_output", model, UnsupportedLayerError,
                      "'again' \\(Relu\\): its output 'W' is already defined")


def onnx_external_data(d, rng):
    """An initializer kept in an external file that declares 2**40 values: refused before the file is read."""
    from onnx import TensorProto, helper
    (d / "weights.bin").write_bytes(np.ones(12, np.float32).tobytes())
    init = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2 ** 20, 2 ** 20])
    init.data_location = TensorProto.EXTERNAL
    init.external_data.add(key="location", value="weights.bin")
    return _onnx_case(d, "onnx_external_data", _onnx_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [init]),
                      ModelFormatError, "initializer 'w': the tensor declares 1099511627776 values")


def onnx_mutated_sizes(d, rng):
    """A small valid conv net whose shape constants, kernel, pads and strides are replaced by random values,
    small to absurd: it loads or is refused with an lrpnumpy error, fast and in little memory."""
    from onnx import helper

    def size():
        return int(rng.choice([0, 1, 2, 3, -1, -2 ** 40, 2 ** 16, 2 ** 31 - 1, 2 ** 40, 2 ** 62, 2 ** 63 - 1]))

    def maybe(value, k):
        return [size() for _ in range(k)] if rng.random() < 0.3 else value
    wshape, kernel = maybe([2, 1, 3, 3], int(rng.integers(1, 6))), maybe([3, 3], 2)
    nodes = [_ints("ws", wshape), helper.make_node("ConstantOfShape", ["ws"], ["w"], value=_float_value(0.5)),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=kernel, pads=maybe([1, 1, 1, 1], 4),
                              strides=maybe([1, 1], 2)),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=maybe([2, 2], 2),
                              pads=maybe([0, 0, 0, 0], 4), strides=maybe([2, 2], 2)),
             _ints("t", maybe([1, -1], int(rng.integers(1, 4)))),
             helper.make_node("Reshape", ["p", "t"], ["f"], name="flat"),
             _ints("gs", maybe([3, 32], 2)), helper.make_node("ConstantOfShape", ["gs"], ["g"], value=_float_value(0.1)),
             helper.make_node("Gemm", ["f", "g"], ["y"], name="fc", transB=1)]
    case = _onnx_case(d, "onnx_mutated_sizes", _onnx_model(nodes, in_shape=maybe([1, 1, 8, 8], 4)), LRPError, "")
    case.extra = {"may_load": True}
    return case


def _float_value(v):
    from onnx import numpy_helper
    return numpy_helper.from_array(np.array([v], np.float32))


# ----- Caffe -----

def caffe_phase_rules(d, rng):
    """Include/exclude rules as Caffe applies them at TEST: the file loads with the right layers."""
    from lrpnumpy.io import load_caffe
    from lrpnumpy.io.caffe import schema
    rules = str(rng.choice(["exclude { phase: TEST }", "include { }", "include { phase: TRAIN } include { phase: TEST }",
                            "exclude { phase: TRAIN }", "include { phase: TRAIN }"]))
    kept = rules in ("include { }", "include { phase: TRAIN } include { phase: TEST }", "exclude { phase: TRAIN }")
    text = ('input: "data"\ninput_shape { dim: 1 dim: 3 }\n'
            f'layer {{ name: "r" type: "ReLU" bottom: "data" top: "data" {rules} }}\n'
            'layer { name: "t" type: "TanH" bottom: "data" top: "y" }\n')
    (d / "phase.prototxt").write_text(text)
    (d / "phase.caffemodel").write_bytes(schema()["NetParameter"]().SerializeToString())
    case = Hostile("caffe_phase_rules", lambda: load_caffe(str(d / "phase.prototxt"), str(d / "phase.caffemodel")),
                   None, "", len(text))
    case.extra = {"rules": rules, "layers": ["ReLU", "Tanh"] if kept else ["Tanh"]}
    return case


# ----- native -----

def _native_file(path, arch, arrays, duplicate=None):
    import io
    with zipfile.ZipFile(path, "w") as z:
        members = [("__architecture__.npy", np.array(json.dumps(arch)))] + [(f"{k}.npy", v) for k, v in arrays.items()]
        if duplicate:
            members.append((f"{duplicate[0]}.npy", duplicate[1]))
        import warnings
        for name, value in members:
            buf = io.BytesIO()
            np.save(buf, value)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns about the duplicate name, the point of the file
                z.writestr(name, buf.getvalue())
    return path.stat().st_size


def _linear_arch(meta=None):
    return {"format": "lrpnumpy", "version": 1, "input_shape": [3], "meta": meta or {},
            "layers": [{"type": "Linear", "args": {"in_features": 3, "out_features": 2, "bias": False},
                        "params": ["weight"]}]}


def native_duplicate_member(d, rng):
    """An archive with two members named layer0.weight (today the last wins)."""
    from lrpnumpy.io import load
    path = d / "dup.npz"
    size = _native_file(path, _linear_arch(), {"layer0.weight": np.ones((2, 3))},
                        duplicate=("layer0.weight", -np.ones((2, 3))))
    return Hostile("native_duplicate_member", lambda: load(str(path)), ModelFormatError,
                   "member 'layer0.weight.npy' appears 2 times", size)


_BAD_META = [({"input_range": "ab"}, "meta 'input_range'"), ({"input_range": [1.0, 0.0]}, "meta 'input_range'"),
             ({"input_range": [0, None]}, "meta 'input_range'"), ({"classes": ["only one"]}, "meta 'classes'"),
             ({"classes": "ab"}, "meta 'classes'"), ({"classes": [1, 2]}, "meta 'classes'"),
             ({"classes": ["a", "b", "c"]}, "meta 'classes' names 3 classes, but the network has 2 outputs"),
             ({"dataset": 3}, "meta 'dataset'"), ({"test_accuracy": "high"}, "meta 'test_accuracy'")]


def native_bad_meta(d, rng):
    """A meta record with a value of the wrong kind (today a traceback later, in explain)."""
    from lrpnumpy.io import load
    meta, match = _BAD_META[int(rng.integers(len(_BAD_META)))]
    path = d / "meta.npz"
    size = _native_file(path, _linear_arch(meta), {"layer0.weight": np.ones((2, 3))})
    return Hostile("native_bad_meta", lambda: load(str(path)), ModelFormatError, match, size, {"meta": meta})


ONNX = [onnx_reshape_target, onnx_unsqueeze_axes, onnx_shape_of_shape, onnx_gemm_weight, onnx_many_weights,
        onnx_declared_initializer, onnx_duplicate_initializer, onnx_foreign_domain, onnx_pool_pads,
        onnx_redefined_output, onnx_external_data, onnx_mutated_sizes]
CLASSES = ONNX + [caffe_phase_rules, native_duplicate_member, native_bad_meta]


def run(case):
    """Load ``case``: (what came out, seconds, peak traced MB, the network or None).

    What came out: "loaded", the lrpnumpy error's class name and message, or "FOREIGN ..." for any
    other exception.
    """
    tracemalloc.start()
    t = time.perf_counter()
    net = None
    try:
        net = case.load()
        outcome = "loaded"
    except LRPError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - what the callers count
        outcome = f"FOREIGN {type(exc).__name__}: {str(exc)[:300]}"
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return outcome, seconds, peak, net


def violation(case, outcome, seconds, peak, net, max_seconds=5.0, max_mb=20.0):
    """Why the outcome breaks the contract, or None."""
    import re
    if outcome.startswith("FOREIGN"):
        return outcome
    if seconds > max_seconds:
        return f"took {seconds:.1f} s"
    if peak > max_mb:
        return f"peak {peak:.0f} MB"
    if case.error is None:
        if net is None:
            return f"refused a valid file: {outcome[:200]}"
        want = case.extra.get("layers")
        if want is not None and [type(layer).__name__ for layer in net] != want:
            return f"layers {[type(layer).__name__ for layer in net]}, expected {want} ({case.extra})"
        return None
    if net is not None:
        return None if case.extra.get("may_load") else "loaded"
    if case.error is not LRPError and not outcome.startswith(case.error.__name__ + ":"):
        return f"expected {case.error.__name__}, got {outcome[:200]}"
    if len(outcome) > 600:
        return f"message of {len(outcome)} characters"
    if not re.search(case.match, outcome):
        return f"message {outcome[:300]!r} does not match {case.match!r}"
    return None
