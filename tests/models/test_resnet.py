"""resnet18_2d: torchvision's state names and sizes, the same outputs as a torch replica (`oracle`),
trained by `medgrad train`, saved and loaded, run by engine.deploy with identical outputs, and
explained with Grad-CAM at any conv inside its nested blocks."""

from __future__ import annotations

import numpy as np
import pytest

import models
from engine import Tensor, backend, deploy, nn
from engine.checkpoint import load_model, save_checkpoint
from engine.cli import main
from engine.errors import ArgumentError
from engine.explain import _centres_to, conv_layer_names, explain_images, grad_cam
from tests.conftest import TOL


def _small(**kw):
    return models.get("resnet18_2d", width=4, rng=np.random.default_rng(0), **kw)


def test_state_names_and_size_are_torchvision_resnet18s():
    model = models.get("resnet18_2d", in_channels=3, num_classes=1000)
    state = model.state_dict()
    assert len(state) == 122  # 62 parameters + 20 batch norms x 3 buffers, as torchvision's
    n_params = sum(p.size for p in model.parameters())
    assert n_params == 11_689_512  # torchvision.models.resnet18().parameters(), summed
    for key, shape in {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.num_batches_tracked": (),
        "layer4.1.bn2.bias": (512,),
        "fc.weight": (1000, 512),
    }.items():
        assert state[key].shape == shape, key
    assert "layer1.0.downsample.0.weight" not in state  # stage 1 keeps its shape


@pytest.mark.parametrize("stem,size", [("imagenet", 28), ("small", 16), ("imagenet", 9)])
def test_any_input_size_gives_logits(stem, size):
    model = _small(in_channels=2, num_classes=3, stem=stem)
    assert model(Tensor(np.zeros((2, 2, size, size), np.float32))).shape == (2, 3)


def test_bad_arguments_name_themselves():
    with pytest.raises(ArgumentError, match="stem='tiny'"):
        models.get("resnet18_2d", stem="tiny")
    with pytest.raises(ArgumentError, match="width must be"):
        models.get("resnet18_2d", width=0)


def test_spec_rebuilds_and_deploy_runs_it_identically(tmp_path, rng):
    """Trained a few steps (running statistics moved), saved, loaded by the engine and by the
    NumPy-only deploy: identical outputs with the numpy kernels, close with the default ones."""
    import engine.functional as F
    from engine import optim
    from engine.data.phantoms import make_phantoms

    model = _small(num_classes=2)
    x, y = make_phantoms(8, size=28, seed=1)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = F.softmax_cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = save_checkpoint(tmp_path / "resnet.npz", model)
    loaded, _ = load_model(path)
    net = deploy.load(path)
    with backend.use_kernels("numpy"):
        expected = model(Tensor(x)).data
        np.testing.assert_array_equal(loaded(Tensor(x)).data, expected)
    np.testing.assert_array_equal(net(x), expected)
    np.testing.assert_allclose(model(Tensor(x)).data, expected, rtol=1e-4, atol=1e-5)
    rebuilt = nn.from_spec(model.spec())
    assert list(rebuilt.state_dict()) == list(model.state_dict())


def test_grad_cam_reaches_convs_inside_blocks(rng):
    model = _small(num_classes=2).astype(np.float64)
    x = rng.standard_normal((2, 1, 32, 32))
    names = conv_layer_names(model)
    assert names[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert "layer2.0.downsample.0" in names and len(names) == 20
    # conv1 (7x7 s2 p3) and the max pool (3x3 s2 p1) map cell u to 4 u; layer2's first conv
    # (3x3 s2 p1) doubles that; its 1x1 stride-2 shortcut starts from the block's input too
    assert _centres_to(model, "layer2.0.conv1") == ((8.0, 0.0), (8.0, 0.0))
    assert _centres_to(model, "layer2.0.downsample.0") == ((8.0, 0.0), (8.0, 0.0))
    assert _centres_to(model, "layer1") == ((4.0, 0.0), (4.0, 0.0))
    maps = {name: grad_cam(model, x, layer=name) for name in ("layer2.0.conv1", "layer1", None)}
    for cam in maps.values():
        assert cam.shape == (2, 32, 32) and 0 <= cam.min() and cam.max() <= 1
    assert not np.allclose(maps["layer2.0.conv1"], maps["layer1"])
    np.testing.assert_array_equal(maps[None], grad_cam(model, x, layer="layer4"))
    np.testing.assert_array_equal(grad_cam(model, x, layer=0), grad_cam(model, x, layer="conv1"))
    with pytest.raises(ArgumentError, match="'layer9' is not a module with a convolution"):
        grad_cam(model, x, layer="layer9")
    with pytest.raises(ArgumentError, match="layer 1 is not a Conv2d"):
        grad_cam(model, x, layer=1)
    assert not any("fuse" in vars(m) for m in model.modules())  # fusion switched back on
    assert "forward" not in vars(dict(model.named_modules())["layer1"])  # the capture undone


def test_grad_cam_of_a_block_equals_the_gradient_by_hand(rng):
    """The map of "layer3" equals ReLU(sum_k mean(dscore/dA_k) A_k), A taken by running the
    model's children by hand (the last block's output, 2x2 at 32x32 input), resampled."""
    from engine.explain import _resample

    model = _small(num_classes=2).astype(np.float64).eval()
    x = rng.standard_normal((1, 1, 32, 32))
    h = Tensor(x)
    for name, child in model.named_children():
        h = child(h)
        if name == "layer3":
            A = h
    gy = np.zeros_like(h.data)
    gy[0, h.data[0].argmax()] = 1
    h.backward(gy, retain_grad=True)
    cam = np.maximum((A.grad.mean(axis=(2, 3), keepdims=True) * A.data).sum(axis=1), 0)
    up = np.maximum(_resample(cam, (32, 32), *_centres_to(model, "layer3")), 0)
    expected = up / up.max() if up.max() > 0 else up
    np.testing.assert_allclose(grad_cam(model, x, layer="layer3"), expected, **TOL["loops64"])


def test_medgrad_train_explain_and_deploy_a_resnet(tmp_path):
    run = tmp_path / "run"
    tiny = ["--data", "phantoms", "--n-phantoms", "48", "--input-size", "16", "--quiet"]
    argv = ["train", *tiny, "--model", "resnet18_2d", "--epochs", "1", "--batch-size", "16"]
    assert main([*argv, "--val-split", "0.25", "--out", str(run)]) == 0
    assert len(list((run / "explain").glob("*.png"))) == 4  # Grad-CAM ran inside the blocks
    model, ckpt = load_model(run / "model.npz")
    assert ckpt.model_config["name"] == "resnet18_2d"
    x = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    with backend.use_kernels("numpy"):
        np.testing.assert_array_equal(deploy.load(run / "model.npz")(x), model(Tensor(x)).data)
    paths = explain_images(model, x[:1], tmp_path / "ex", layer="layer3.1.conv2")
    assert paths[0].read_bytes()[:4] == b"\x89PNG"


# ---- torch as an oracle: the same network written with torch.nn, torchvision's names ----


def torch_resnet18(torch, in_channels, num_classes, width):
    """torchvision's resnet18 layout in torch.nn, float64 (benchmarks/bench_resnet.py uses it
    too, in float32): the oracle needs no torchvision."""
    tnn = torch.nn

    class BasicBlock(tnn.Module):  # torchvision.models.resnet.BasicBlock
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(inplanes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
                )

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(tnn.Module):  # torchvision.models.resnet.ResNet, BasicBlock, [2, 2, 2, 2]
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(width)
            self.relu = tnn.ReLU()
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            planes = width
            for i in range(4):
                out = width * 2**i
                stage = [BasicBlock(planes, out, 1 if i == 0 else 2), BasicBlock(out, out, 1)]
                setattr(self, f"layer{i + 1}", tnn.Sequential(*stage))
                planes = out
            self.avgpool = tnn.AdaptiveAvgPool2d(1)
            self.fc = tnn.Linear(planes, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet().double()


@pytest.mark.oracle
def test_resnet_matches_a_torch_replica(rng):
    """torch's state loads as is (same keys, shapes); two training steps and eval mode give
    the same outputs, input gradients and running statistics."""
    torch = pytest.importorskip("torch")
    theirs = torch_resnet18(torch, 2, 3, 4)
    ours = _small(in_channels=2, num_classes=3).astype(np.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for p in theirs.parameters():
        p.data = torch.tensor(rng.standard_normal(tuple(p.shape)) * 0.5)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for mode in ("train", "train", "eval"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x, gy = rng.standard_normal((4, 2, 24, 24)), rng.standard_normal((4, 3))
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        ty.backward(torch.tensor(gy))
        xt = Tensor(x, requires_grad=True)
        y = ours(xt)
        y.backward(gy)
        np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-7, atol=1e-9)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-7, atol=1e-9)
