"""ONNX export (engine.export.to_onnx) checked in ONNX Runtime against engine.deploy, and the
import back (from_onnx), including hostile files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import deploy, nn
from engine.checkpoint import Checkpoint, build_model, save_checkpoint
from engine.errors import ArgumentError, SerializationError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
export = pytest.importorskip("engine.export")

ATOL = 1e-5  # float32 through two runtimes; the bound


def _randomise(model: nn.Module, rng) -> nn.Module:
    """Random weights and running statistics (variance > 0), so every array matters."""
    state = {}
    for name, a in model.state_dict().items():
        if a.dtype.kind != "f":
            state[name] = a
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, a.shape).astype(np.float32)
        else:
            state[name] = (rng.standard_normal(a.shape) * 0.5).astype(np.float32)
    model.load_state_dict(state)
    return model.eval()


def _family_2d():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.GroupNorm(2, 4),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2, padding=1),
        nn.InstanceNorm2d(4, affine=True),
        nn.GELU(),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.Sigmoid(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(12, 5),
        nn.Tanh(),
        nn.Identity(),
        nn.LayerNorm(5),
    ), (2, 15, 14)


def _family_3d():
    return nn.Sequential(
        nn.Conv3d(1, 3, 3, padding=1),
        nn.BatchNorm3d(3),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.ConvTranspose3d(3, 2, 2, stride=2),
        nn.InstanceNorm3d(2),
        nn.Upsample(size=(7, 9, 6), mode="trilinear", align_corners=True),
        nn.AvgPool3d(2, stride=1),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.AdaptiveAvgPool3d((2, 2, 5)),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    ), (1, 6, 8, 4)


def _family_blocks():
    block = nn.Residual(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        shortcut=nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)),
        activation=nn.ReLU(),
    )
    plain = nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)))
    return nn.Sequential(
        {
            "stem": block,
            "block": plain,
            # a U-Net's skip: x's 4 channels, then the body's 2 (ONNX Concat), and an additive one
            "skip": nn.SkipConnection(nn.Sequential(nn.Conv2d(4, 2, 3, padding=1))),
            "squeeze": nn.Conv2d(6, 4, 1),
            "add": nn.SkipConnection(nn.Sequential(nn.Conv2d(4, 4, 1)), mode="add"),
            "up": nn.Upsample(size=(12, 16), mode="nearest"),
            "norm": nn.LayerNorm((4, 12, 16)),
            "stats": nn.BatchNorm2d(4, track_running_stats=False),
            "groups": nn.GroupNorm(4, 4, affine=False),
            "pool": nn.AdaptiveAvgPool2d(1),
            "flat": nn.Flatten(),
            "fc": nn.Linear(4, 6),
            "bn": nn.BatchNorm1d(6),
            "ln": nn.LayerNorm(6, elementwise_affine=False),
        }
    ), (3, 6, 8)


FAMILIES = {"2d": _family_2d, "3d": _family_3d, "blocks": _family_blocks}


def _types(spec) -> set[str]:
    found = {spec["type"]} if isinstance(spec, dict) and "type" in spec else set()
    for value in spec.values() if isinstance(spec, dict) else spec:
        if isinstance(value, (dict, list)):
            found |= _types(value)
    return found


def _run_onnx(path, x) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def test_every_layer_type_has_a_builder_and_a_test_model():
    assert set(nn.LAYERS) <= set(export.ONNX_BUILDERS)
    covered = set().union(*(_types(make()[0].spec()) for make in FAMILIES.values()))
    assert set(nn.LAYERS) <= covered, set(nn.LAYERS) - covered


@pytest.mark.parametrize(
    "family,opset", [("2d", 13), ("2d", 17), ("2d", 20), ("3d", 17), ("blocks", 13), ("blocks", 18)]
)
def test_export_equals_deploy_in_onnx_runtime(tmp_path, rng, family, opset):
    model, shape = FAMILIES[family]()
    _randomise(model, rng)
    path = export.to_onnx(model, tmp_path / "m.onnx", opset=opset, input_shape=shape)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    expected = deploy.NumpyModel(Checkpoint(path, None, model.spec(), model.state_dict()))(x)
    np.testing.assert_allclose(_run_onnx(path, x), expected, atol=ATOL, rtol=ATOL)


def test_dynamic_batch_runs_batch_1_and_5_through_one_file(tmp_path, rng):
    model, shape = _family_blocks()
    _randomise(model, rng)
    path = export.to_onnx(model, tmp_path / "m.onnx", input_shape=shape, dynamic_batch=True)
    net = deploy.NumpyModel(Checkpoint(path, None, model.spec(), model.state_dict()))
    for n in (1, 5):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        np.testing.assert_allclose(_run_onnx(path, x), net(x), atol=ATOL, rtol=ATOL)
    fixed = export.to_onnx(model, tmp_path / "f.onnx", input_shape=shape, dynamic_batch=False)
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, *shape]


def _saved_file(tmp_path, rng):
    model, shape = _family_2d()
    _randomise(model, rng)
    pre = {"source": "phantoms", "input_size": [15, 14], "in_channels": 2}
    classes = [f"class{i}" for i in range(5)]
    path = save_checkpoint(tmp_path / "m.npz", model, preprocessing=pre, classes=classes)
    return path, model, shape, pre, classes


def test_cli_export_records_metadata(tmp_path, rng, capsys):
    from engine.cli import main

    path, model, shape, pre, classes = _saved_file(tmp_path, rng)
    out = tmp_path / "m.onnx"
    assert main(["export", str(path), str(out), "--opset", "18", "--dynamic-batch"]) == 0
    assert str(out) in capsys.readouterr().out
    proto = onnx.load(str(out))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["medgrad.classes"] == classes
    assert props["medgrad.preprocessing"] == pre
    assert props["medgrad.spec"] == model.spec()
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(out, x), deploy.load(path)(x), atol=ATOL, rtol=ATOL)


def test_round_trip_gives_the_same_model(tmp_path, rng):
    path, model, shape, pre, classes = _saved_file(tmp_path, rng)
    out = export.to_onnx(path, tmp_path / "m.onnx")
    ckpt = export.from_onnx(out)
    assert ckpt.spec == model.spec() and ckpt.classes == classes and ckpt.preprocessing == pre
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(ckpt.weights[name], a, err_msg=name)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    np.testing.assert_array_equal(deploy.NumpyModel(ckpt)(x), deploy.load(path)(x))
    rebuilt = build_model(ckpt)
    again = export.to_onnx(rebuilt, tmp_path / "again.onnx", input_shape=shape)
    np.testing.assert_array_equal(_run_onnx(again, x), _run_onnx(out, x))


def test_export_refuses_what_onnx_cannot_say(tmp_path):
    odd = nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.Flatten())
    with pytest.raises(ArgumentError, match="divide evenly"):
        export.to_onnx(odd, tmp_path / "m.onnx", input_shape=(1, 7, 7))
    with pytest.raises(ArgumentError, match="opset"):
        export.to_onnx(odd, tmp_path / "m.onnx", opset=9, input_shape=(1, 6, 6))
    with pytest.raises(ArgumentError, match="input_shape"):
        export.to_onnx(odd, tmp_path / "m.onnx")


# ---- hostile files: only SerializationError naming the file may come out ----


def _exported(tmp_path, rng):
    model, shape = _family_blocks()
    _randomise(model, rng)
    return export.to_onnx(model, tmp_path / "good.onnx", input_shape=shape)


def _refused(path, match: str = ""):
    with pytest.raises(SerializationError, match=match) as info:
        export.from_onnx(path)
    assert str(path) in str(info.value)


def test_from_onnx_refuses_edited_graphs(tmp_path, rng):
    good = _exported(tmp_path, rng)
    proto = onnx.load(str(good))

    def variant(name, edit):
        p = onnx.ModelProto()
        p.CopyFrom(proto)
        edit(p)
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(p.SerializeToString())
        return path

    def unknown_op(p):
        p.graph.node[0].op_type = "Loop"

    def wrong_shape(p):
        t = next(t for t in p.graph.initializer if t.name == "fc.weight")
        t.CopyFrom(onnx.numpy_helper.from_array(np.zeros((4, 6), np.float32), "fc.weight"))

    def huge_dims(p):
        t = next(t for t in p.graph.initializer if t.name == "fc.weight")
        del t.dims[:]
        t.dims.extend([6, 1 << 40])

    def lying_count(p):
        t = next(t for t in p.graph.initializer if t.name == "fc.weight")
        t.raw_data = t.raw_data[:8]

    def huge_spec(p):
        meta = next(m for m in p.metadata_props if m.key == "medgrad.spec")
        spec = json.loads(meta.value)
        spec["layers"][8] = {"type": "Linear", "in_features": 1 << 30, "out_features": 1 << 30}
        meta.value = json.dumps(spec)

    def odd_spec(p):
        meta = next(m for m in p.metadata_props if m.key == "medgrad.spec")
        spec = json.loads(meta.value)
        spec["layers"][8] = {"type": 5, "kernel_size": "x", "layers": [{"type": "Conv2d"}]}
        meta.value = json.dumps(spec)

    def no_spec(p):
        del p.metadata_props[:]

    def missing_weight(p):
        keep = [t for t in p.graph.initializer if t.name != "fc.bias"]
        del p.graph.initializer[:]
        p.graph.initializer.extend(keep)

    cases = {
        "unknown_op": (unknown_op, "op types"),
        "wrong_shape": (wrong_shape, "shape"),
        "huge_dims": (huge_dims, "shape"),
        "lying_count": (lying_count, "declares"),
        "huge_spec": (huge_spec, "declares"),
        "odd_spec": (odd_spec, "spec"),
        "no_spec": (no_spec, "metadata"),
        "missing_weight": (missing_weight, "missing"),
    }
    for name, (edit, match) in cases.items():
        _refused(variant(name, edit), match)


def test_from_onnx_survives_mutated_bytes(tmp_path, rng):
    """Truncations, bit flips and random bytes: SerializationError or a valid Checkpoint."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    data = _exported(tmp_path, rng).read_bytes()
    path = tmp_path / "mutant.onnx"
    outcomes = {"ok": 0, "error": 0}

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @hypothesis.given(
        cut=st.integers(0, len(data)),
        flips=st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)), max_size=4),
        head=st.binary(max_size=8),
    )
    def run(cut, flips, head):
        mutant = bytearray(data[:cut])
        for at, bit in flips:
            if at < len(mutant):
                mutant[at] ^= 1 << bit
        path.write_bytes(bytes(head) + bytes(mutant))
        try:
            ckpt = export.from_onnx(path)
        except SerializationError as exc:
            assert str(path) in str(exc)
            outcomes["error"] += 1
        else:
            assert isinstance(ckpt.spec, dict)
            outcomes["ok"] += 1

    run()
    assert outcomes["error"] > 0
    _refused(tmp_path / "absent.onnx", "cannot read")
