"""The two-tower AlexNet: shapes and counts from the paper, LRN as written, init, equivalence with the
grouped single-device network, 224 vs 227, device-agnostic weights, a training step, `alexnet summary`."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from pipeline.errors import UserError
from helpers.photos import sample_files
from trainer.model import AlexNet, GroupedAlexNet, PaperLRN
from trainer.use.summary import model_summary

# docs/reference.md "Layers": both towers together, 1000 classes.
PAPER_PARAMS = {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936, "conv5": 442_624,
                "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}
PAPER_SHAPES = {"conv1": [96, 55, 55], "pool1": [96, 27, 27], "conv2": [256, 27, 27], "pool2": [256, 13, 13],
                "conv3": [384, 13, 13], "conv4": [384, 13, 13], "conv5": [256, 13, 13], "pool5": [256, 6, 6],
                "fc6": [4096], "fc7": [4096], "fc8": [1000]}


def real_batch(count: int, size: int = 224) -> torch.Tensor:
    """Real photographs, float NCHW on the 0-255 scale, batch mean subtracted per channel."""
    files = sample_files()[:count]
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    batch = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float()
    return batch - batch.mean(dim=(0, 2, 3), keepdim=True)


def small_model(variant: str = "paper", **options) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(10, variant, ("cpu", "cpu"), width=0.25, **options)


@pytest.fixture(scope="module")
def paper_model() -> AlexNet:
    torch.manual_seed(0)
    return AlexNet()


@pytest.mark.parametrize("variant,size", [("paper", 224), ("paper", 227), ("caffenet", 224)])
def test_layer_shapes_and_parameter_counts_match_the_paper(variant, size):
    summary = model_summary(variant, size)
    params: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}
    for row in summary["layers"]:
        params[row["name"]] = params.get(row["name"], 0) + row["params"]
        combined = shapes.setdefault(row["name"], [0, *row["output_shape"][1:]])  # towers add channels
        assert combined[1:] == row["output_shape"][1:]
        combined[0] += row["output_shape"][0]
    assert {name: params[name] for name in PAPER_PARAMS} == PAPER_PARAMS
    assert {name: shapes[name] for name in PAPER_SHAPES} == PAPER_SHAPES
    assert summary["total_params"] == 60_965_224
    assert {row["tower"] for row in summary["layers"] if row["name"] == "fc8"} == {0}
    order = [row["name"] for row in summary["layers"] if row["tower"] == 1][:6]
    lrn_first = ["conv1", "norm1", "pool1", "conv2", "norm2", "pool2"]
    assert order == (lrn_first if variant == "paper" else ["conv1", "pool1", "norm1", "conv2", "pool2", "norm2"])


def test_real_model_has_the_papers_parameter_count_and_initialisation(paper_model):
    assert sum(p.numel() for p in paper_model.parameters()) == 60_965_224
    for name, param in paper_model.named_parameters():
        layer, kind = name.split(".")[-2:]
        if kind == "weight":
            assert abs(param.mean().item()) < 1e-3, name
            assert param.std().item() == pytest.approx(0.01, rel=0.03), name
        else:
            expected = 1.0 if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(param == expected), name


def test_positive_bias_option_changes_only_those_biases():
    model = small_model(positive_bias=0.1)
    biases = {name: p for name, p in model.named_parameters() if name.endswith("bias")}
    assert torch.all(biases["towers.1.conv4.bias"] == 0.1) and torch.all(biases["fc8.bias"] == 0)
    assert torch.all(biases["towers.0.conv1.bias"] == 0) and torch.all(biases["towers.0.fc7.bias"] == 0.1)


def test_scaled_init_keeps_a_narrow_models_output_dependent_on_the_image():
    """At width 0.25 the paper's fixed std drowns the image in the constant biases; "scaled" does not."""
    images = real_batch(8)
    spreads = {}
    for init in ("paper", "scaled"):
        model = small_model(init=init).eval()
        weights = {n.split(".")[-2]: p for n, p in model.named_parameters() if n.startswith("towers.0") and
                   n.endswith("weight")}
        expected = 0.01 if init == "paper" else 0.02  # 0.01 / sqrt(0.25) after conv1
        assert weights["conv1"].std().item() == pytest.approx(0.01, rel=0.05)
        for layer in ("conv2", "conv5", "fc6", "fc7"):
            assert weights[layer].std().item() == pytest.approx(expected, rel=0.05), (init, layer)
        with torch.no_grad():
            spreads[init] = model(images).std(dim=0).mean().item()  # how much the logits depend on the image
    assert spreads["scaled"] > 20 * spreads["paper"], spreads
    with pytest.raises(UserError, match="unknown init 'kaiming'"):
        small_model(init="kaiming")


def lrn_numpy(a: np.ndarray, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75) -> np.ndarray:
    """The paper's formula, map by map: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    maps = a.shape[1]
    out = np.empty_like(a)
    for i in range(maps):
        lo, hi = max(0, i - n // 2), min(maps - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(axis=1)) ** beta
    return out


def test_lrn_follows_the_papers_formula_as_written():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 200, size=(2, 12, 5, 7))  # post-ReLU activations large enough for LRN to matter
    got = PaperLRN()(torch.tensor(a, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, lrn_numpy(a), rtol=1e-5)
    # PyTorch's module with alpha=1e-4 would be a different (5x weaker) normalisation.
    torch_default = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(torch.tensor(a).float())
    assert not np.allclose(torch_default.numpy(), got, rtol=1e-3)


def test_lrn_runs_in_float32_for_bf16_and_keeps_channels_last():
    a = (torch.rand(2, 12, 5, 7) * 200).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = PaperLRN()(a)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    expected = torch.tensor(lrn_numpy(a.double().numpy())).bfloat16()  # fp64 math, one rounding
    assert torch.equal(got, expected.contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("variant", ["paper", "caffenet"])
def test_two_towers_equal_the_grouped_single_device_network(variant):
    images, labels = real_batch(6), torch.arange(6)
    towers = small_model(variant, dropout=0.0)
    grouped = GroupedAlexNet.from_towers(towers, dropout=0.0)
    torch.testing.assert_close(towers(images), grouped(images), rtol=1e-4, atol=1e-5)  # fp32
    # Gradients in float64: under the paper's init the lower layers' fp32 gradients carry ~1% rounding
    # error (cancellation) in either network, so fp32 would hide a real difference; float64 does not.
    towers, grouped, images = towers.double(), grouped.double(), images.double()
    F.cross_entropy(towers(images), labels).backward()
    F.cross_entropy(grouped(images), labels).backward()
    tower_params = dict(towers.named_parameters())
    for name, param in grouped.named_parameters():
        parts = [tower_params[name]] if name.startswith("fc8") else [tower_params[f"towers.{t}.{name}"] for t in (0, 1)]
        expected = torch.cat([part.grad for part in parts])
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(param.grad, expected, rtol=1e-9, atol=1e-12)


def test_224_input_equals_227_padded_on_the_right_and_bottom():
    model = small_model().eval()
    images = real_batch(3, 224)
    with torch.no_grad():
        out_224 = model(images)
        out_227 = model(F.pad(images, (0, 3, 0, 3)))
        out_other_227 = model(real_batch(3, 227))
        conv1 = model.towers[0].conv1(F.pad(images, (0, 3, 0, 3)))
    assert conv1.shape[-2:] == (55, 55)
    torch.testing.assert_close(out_224, out_227, rtol=0, atol=0)
    assert out_other_227.shape == (3, 10)
    with pytest.raises(UserError, match=r"224, 224\] or .*227, 227\], got \[1, 3, 256, 256\]"):
        model(torch.zeros(1, 3, 256, 256))


def test_weights_saved_from_two_devices_load_anywhere_with_the_same_outputs(tmp_path):
    two_devices = small_model()
    state = two_devices.state_dict()
    assert all(value.device.type == "cpu" for value in state.values())
    assert not any("cpu" in key or "cuda" in key for key in state)
    torch.save(state, tmp_path / "model.pt")
    torch.manual_seed(1)
    one_device = AlexNet(10, "paper", ("cpu", "cpu"), width=0.25)
    one_device.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    images = real_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(one_device.eval()(images), two_devices.eval()(images), rtol=0, atol=0)
        grouped = GroupedAlexNet.from_towers(one_device).eval()
        torch.testing.assert_close(grouped(images), two_devices(images), rtol=1e-4, atol=1e-5)


class TransferLog(TorchFunctionMode):
    """Records `Tensor.to(device)` calls and the layers that run, in order (a real forward pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and any(isinstance(a, (str, torch.device))
                                           for a in (*args[1:], *kwargs.values())):
            self.events.append("to")
        return func(*args, **kwargs)


def test_cross_device_traffic_only_at_the_input_conv3_fc6_fc7_fc8():
    model = small_model()
    log = TransferLog()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_pre_hook(lambda m, i, name=name: log.events.append(name))
    with log:
        model(real_batch(2))
    # The layer run right after each group of transfers, and how many transfers fed it.
    fed: list[tuple[str, int]] = []
    count = 0
    for event in log.events:
        if event == "to":
            count += 1
        elif count:
            fed.append((event, count))
            count = 0
    assert fed == [("towers.0.conv1", 1), ("towers.1.conv1", 1),  # each tower gets the image
                   ("towers.0.conv3", 2), ("towers.1.conv3", 2), ("towers.0.fc6", 2), ("towers.1.fc6", 2),
                   ("towers.0.fc7", 2), ("towers.1.fc7", 2), ("fc8", 2)]


def test_autocast_bf16_and_channels_last_give_the_fp32_answer():
    model = small_model(dropout=0.0).eval()
    images = real_batch(4)
    with torch.no_grad():
        fp32 = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.to(memory_format=torch.channels_last)(images.contiguous(memory_format=torch.channels_last))
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05 * fp32.abs().max().item())


def test_a_training_step_reduces_the_loss_on_a_fixed_batch():
    # The narrow-model settings (docs/model.md, "Init"): with bias 1 the first steps at lr 0.01 overshoot.
    model = small_model(dropout=0.0, positive_bias=0.1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = real_batch(8), torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    losses = []
    for _ in range(3):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.cross_entropy(model(images), labels).item())
    assert losses[1] < losses[0] and losses[-1] < losses[0] - 1e-3, losses


def test_bad_configurations_fail_clearly():
    with pytest.raises(UserError, match="unknown model variant 'vgg'.*paper, caffenet, one-tower"):
        AlexNet(10, "vgg")
    with pytest.raises(UserError, match="device cuda:1 is not available"):
        AlexNet(10, devices=("cpu", "cuda:1"), width=0.25)
    with pytest.raises(UserError, match="two devices"):
        AlexNet(10, devices=("cpu",), width=0.25)
    with pytest.raises(UserError, match="not device names"):
        AlexNet(10, devices=("cpu", "gpu0"), width=0.25)


def test_one_tower_variant_is_the_keras_snippet():
    summary = model_summary("one-tower", 227)
    assert summary["total_params"] == 62_378_344  # 96-256-384-384-256 convs, no groups
    assert {row["tower"] for row in summary["layers"]} == {0}
    assert not any(row["name"].startswith("norm") for row in summary["layers"])
    model = small_model("one-tower")
    assert len(model.towers) == 1 and model(real_batch(2, 227)).shape == (2, 10)
