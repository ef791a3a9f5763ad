"""``hecnn.load("model.onnx")``: exported models reproduce the PyTorch module; unsupported ops
fail with the op, the node and what to do instead."""

import _models
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import hecnn
from hecnn.compile import compile_model
from hecnn.compile.ir import AffineNode, PolyNode
from hecnn.errors import HecnnError, UnsupportedLayerError
from hecnn.runtime.simulate import simulate


@pytest.mark.parametrize("name", ["relu_lenet", "square_bn_cnn", "sigmoid_mlp"])
def test_exported_model_loads_and_matches_the_module(name, onnx_dir, images):
    model = getattr(_models, name)()
    loaded = hecnn.load(onnx_dir / f"{name}.onnx")
    assert isinstance(loaded, torch.nn.Module)
    x = torch.as_tensor(images)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5)


def test_silu_export_becomes_silu_module(onnx_dir):
    loaded = hecnn.load(onnx_dir / "sigmoid_mlp.onnx")
    kinds = {type(m).__name__ for m in loaded.modules()}
    assert {"SiLU", "Sigmoid"} <= kinds


def _graph_model(nodes, inits, path, out_shape=(1, 3)):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def _bn_pow_model(path):
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.normal(size=(2, 1, 3, 3)),
        "b": rng.normal(size=2),
        "scale": np.array([1.5, 0.5]),
        "shift": np.array([0.1, -0.2]),
        "mean": np.array([0.2, -0.3]),
        "var": np.array([0.5, 2.0]),
        "two": np.array(2.0),
        "half": np.array(0.5),
        "fc": rng.normal(size=(3, 8)),
        "fcb": rng.normal(size=3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv0"),
        helper.make_node(
            "BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], name="bn0"
        ),
        helper.make_node("Pow", ["n", "two"], ["p"], name="pow0"),
        helper.make_node("Mul", ["p", "half"], ["h"], name="mul0"),
        helper.make_node("Flatten", ["h"], ["f"], name="flat0", axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc0", transB=1),
    ]
    return _graph_model(nodes, inits, path)


def test_helper_built_bn_pow_graph_compiles_with_bn_folded(tmp_path):
    model = hecnn.load(_bn_pow_model(tmp_path / "bnpow.onnx"))
    plan = compile_model(model, (1, 4, 4), batch=4, insecure_ring_for_tests=1 << 12)
    assert [n.degree for n in plan.nodes if isinstance(n, PolyNode)] == [2]
    assert sum(isinstance(n, AffineNode) for n in plan.nodes) == 2  # conv+BN, then the Gemm
    x = np.random.default_rng(1).normal(size=(4, 1, 4, 4)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).double().numpy()
    np.testing.assert_allclose(simulate(plan, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("op", "advice"), [("Softmax", "drop the final Softmax"), ("Tanh", "instead of Tanh")]
)
def test_unsupported_op_names_op_node_and_remedy(tmp_path, op, advice):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat0", axis=1),
        helper.make_node("Gemm", ["f", "fc"], ["g"], name="fc0", transB=1),
        helper.make_node(op, ["g"], ["y"], name="the_bad_node"),
    ]
    path = _graph_model(nodes, {"fc": rng.normal(size=(3, 16))}, tmp_path / "bad.onnx")
    with pytest.raises(UnsupportedLayerError) as err:
        hecnn.load(path)
    msg = str(err.value)
    assert repr(op) in msg and "the_bad_node" in msg and advice in msg


def test_unknown_op_lists_what_is_supported(tmp_path):
    nodes = [helper.make_node("Cos", ["x"], ["y"], name="cos0")]
    path = _graph_model(nodes, {}, tmp_path / "cos.onnx", out_shape=(1, 1, 4, 4))
    with pytest.raises(UnsupportedLayerError, match=r"'Cos'.*cos0.*supported ops \(Add"):
        hecnn.load(path)


def test_missing_file_is_a_hecnn_error(tmp_path):
    with pytest.raises(HecnnError, match="does not exist"):
        hecnn.load(tmp_path / "nope.onnx")


def _erf_gelu_model(path, with_pattern=True):
    rng = np.random.default_rng(0)
    inits = {
        "fc": rng.normal(size=(4, 16)),
        "fc2": rng.normal(size=(3, 4)),
        "sqrt2": np.array(np.sqrt(2.0)),
        "one": np.array(1.0),
        "half": np.array(0.5),
    }
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat0", axis=1),
        helper.make_node("Gemm", ["f", "fc"], ["g"], name="fc0", transB=1),
        helper.make_node("Div", ["g", "sqrt2"], ["d"], name="div0"),
        helper.make_node("Erf", ["d"], ["e"], name="erf0"),
    ]
    if with_pattern:  # torch's opset-17 GELU: 0.5 · x · (1 + erf(x/√2))
        nodes += [
            helper.make_node("Add", ["e", "one"], ["a"], name="add0"),
            helper.make_node("Mul", ["g", "a"], ["m"], name="mul0"),
            helper.make_node("Mul", ["m", "half"], ["h"], name="mul1"),
            helper.make_node("Gemm", ["h", "fc2"], ["y"], name="fc1", transB=1),
        ]
    else:
        nodes += [helper.make_node("Gemm", ["e", "fc2"], ["y"], name="fc1", transB=1)]
    return _graph_model(nodes, inits, path)


def test_erf_gelu_pattern_becomes_gelu(tmp_path):
    model = hecnn.load(_erf_gelu_model(tmp_path / "gelu.onnx"))
    assert any(isinstance(m, torch.nn.GELU) for m in model.modules())
    x = torch.rand(4, 1, 4, 4)
    g = x.flatten(1) @ model.fc0.weight.T
    ref = torch.nn.functional.gelu(g) @ model.fc1.weight.T
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), ref.detach().numpy(), atol=1e-5)


def test_lone_erf_is_a_clear_compile_error(tmp_path):
    model = hecnn.load(_erf_gelu_model(tmp_path / "erf.onnx", with_pattern=False))
    with pytest.raises(UnsupportedLayerError, match="erf"):
        compile_model(model, (1, 4, 4), batch=4, insecure_ring_for_tests=1 << 12)
