"""The paper's AlexNet written as two towers, tower t on device t (model parallel, as on two GTX 580s).

    model = AlexNet(1000, "paper", devices=("cuda:0", "cuda:1"))
    logits = model(images)        # float NCHW on devices[0] → logits [B, classes] on devices[0]

Cross-device traffic happens exactly where the paper's towers talk: conv3, fc6 and fc7 read both
towers' outputs, and fc8 (on device 0) reads both fc7s. Besides that, the input batch is copied to
device 1 once, as the paper fed every image to both GPUs.

Conventions (docs/model.md, "Conventions chosen"):
- LRN uses the paper's formula as written, b = a / (k + alpha * sum_{n maps} a^2)^beta with k=2, n=5,
  alpha=1e-4, beta=0.75, i.e. alpha is per square. PyTorch's LocalResponseNorm divides alpha by n,
  so it gets alpha * n = 5e-4. It runs within each tower's own maps, in float32 even under autocast.
- A 224 input is padded by 3 on the right and bottom before conv1, which is what cuda-convnet's
  `1 + ceil((size - 11) / 4)` output size amounted to: 224 and 227 both give 55x55.
- Initialisation: weights N(0, 0.01) at width 1 (the paper); biases `positive_bias` (the paper's 1) in
  conv2, conv4, conv5, fc6, fc7, else 0. Narrower models need `init="scaled"` (the default), see
  `AlexNet.reset_parameters`.
- `state_dict()` holds CPU tensors under names that do not depend on the devices, so a checkpoint
  saved on two GPUs loads into the same variant on one GPU or the CPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError
from trainer.config import INITS, VARIANTS

PAPER_STD = 0.01

# Per-tower widths of the paper's network (two towers); the one-tower variant doubles them.
TOWER_WIDTHS = {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128, "fc6": 2048, "fc7": 2048}
# Layers whose bias starts at `positive_bias` (the paper: "the neuron biases in the second, fourth,
# and fifth convolutional layers, as well as in the fully-connected hidden layers, with the constant 1").
POSITIVE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0  # the paper's values; alpha per square
POOL_MAPS = 6  # pool5 output is 6x6 for 224 (padded) and 227 inputs


def conv1_padding(size: int) -> int:
    """Right/bottom padding that gives conv1 cuda-convnet's output size 1 + ceil((size - 11) / 4)."""
    out = 1 + math.ceil((size - 11) / 4)
    return (out - 1) * 4 + 11 - size


def check_input_size(shape: Sequence[int]) -> None:
    """fc6 expects 6x6 pool5 maps, i.e. a 55x55 conv1 output: inputs 223 to 227 pixels (224 and 227 in use)."""
    if len(shape) != 4 or shape[1] != 3 or any(1 + math.ceil((s - 11) / 4) != 55 for s in shape[-2:]):
        raise UserError(f"AlexNet takes RGB batches [B, 3, 224, 224] or [B, 3, 227, 227], got {list(shape)}")


class PaperLRN(nn.Module):
    """Local response normalisation across channels, the paper's formula, computed in float32."""

    def __init__(self, size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA,
                 k: float = LRN_K) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bf16 squares summed over 5 maps lose too much precision: always float32, autocast off.
        kind = x.device.type
        with torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else nullcontext():
            # PyTorch divides alpha by size; multiply it back to get the formula as written.
            y = F.local_response_norm(x.float(), self.size, alpha=self.alpha * self.size,
                                      beta=self.beta, k=self.k)
        memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        return y.to(x.dtype).contiguous(memory_format=memory_format)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha} per square, beta={self.beta}, k={self.k}"


class Tower(nn.Module):
    """One column of the network: every layer that lives on one device.

    `towers` is how many columns feed the layers that read all of them (conv3, fc6, fc7).
    """

    def __init__(self, widths: dict[str, int], towers: int, *, lrn: bool, pool_before_lrn: bool,
                 dropout: float) -> None:
        super().__init__()
        w = widths
        self.pool_before_lrn = pool_before_lrn
        self.conv1 = nn.Conv2d(3, w["conv1"], 11, stride=4)
        self.norm1 = PaperLRN() if lrn else nn.Identity()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(w["conv1"], w["conv2"], 5, padding=2)
        self.norm2 = PaperLRN() if lrn else nn.Identity()
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(w["conv2"] * towers, w["conv3"], 3, padding=1)
        self.conv4 = nn.Conv2d(w["conv3"], w["conv4"], 3, padding=1)
        self.conv5 = nn.Conv2d(w["conv4"], w["conv5"], 3, padding=1)
        self.pool5 = nn.MaxPool2d(3, 2)
        self.fc6 = nn.Linear(w["conv5"] * towers * POOL_MAPS * POOL_MAPS, w["fc6"])
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Linear(w["fc6"] * towers, w["fc7"])
        self.drop7 = nn.Dropout(dropout)

    def _norm_pool(self, x: torch.Tensor, norm: nn.Module, pool: nn.Module) -> torch.Tensor:
        return norm(pool(x)) if self.pool_before_lrn else pool(norm(x))

    def lower(self, image: torch.Tensor) -> torch.Tensor:
        """conv1 → conv2 on this tower's own maps → [B, conv2, 13, 13]."""
        x = self._norm_pool(F.relu(self.conv1(image)), self.norm1, self.pool1)
        return self._norm_pool(F.relu(self.conv2(x)), self.norm2, self.pool2)

    def upper(self, both: torch.Tensor) -> torch.Tensor:
        """conv3 (reads every tower) → conv5 → pool, flattened to [B, conv5 * 36]."""
        x = F.relu(self.conv3(both))
        x = F.relu(self.conv5(F.relu(self.conv4(x))))
        return torch.flatten(self.pool5(x), 1)

    def hidden6(self, both: torch.Tensor) -> torch.Tensor:
        return self.drop6(F.relu(self.fc6(both)))

    def hidden7(self, both: torch.Tensor) -> torch.Tensor:
        return self.drop7(F.relu(self.fc7(both)))


def gather(parts: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Every tower's output on `device`, concatenated in tower order along dim 1: the cross-device step."""
    return torch.cat([part.to(device) for part in parts], dim=1)


def default_devices() -> tuple[str, str]:
    """Two GPUs when there are two, both towers on the one GPU when there is one, else the CPU."""
    count = torch.cuda.device_count()
    if count >= 2:
        return ("cuda:0", "cuda:1")
    return ("cuda:0", "cuda:0") if count == 1 else ("cpu", "cpu")


def _check_devices(devices: Sequence[str | torch.device]) -> tuple[torch.device, torch.device]:
    if len(devices) != 2:
        raise UserError(f"AlexNet needs two devices (one per tower), got {list(devices)}")
    try:
        parsed = tuple(torch.device(d) for d in devices)
    except RuntimeError:
        raise UserError(f"AlexNet devices {list(devices)}: not device names (cpu, cuda:0, ...)") from None
    for device in parsed:
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise UserError(f"device {device} is not available: this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")
    if parsed[0] == parsed[1] and parsed[0].type == "cuda":
        warnings.warn(f"both AlexNet towers on {parsed[0]}: the model runs, without model parallelism",
                      stacklevel=3)
    return parsed  # type: ignore[return-value]


class AlexNet(nn.Module):
    """The paper's network (or a named variant), `width` times as wide, with `num_classes` outputs.

    Variants: "paper" (LRN then pool), "caffenet" (pool then LRN, as CaffeNet has it),
    "one-tower" (the single-column form of many re-implementations: one column, no LRN, no groups; devices[0]).
    `width` scales every conv and hidden fc width (0.25 gives a small, fast test model).
    """

    def __init__(self, num_classes: int = 1000, variant: str = "paper",
                 devices: Sequence[str | torch.device] = ("cpu", "cpu"), *, width: float = 1.0,
                 dropout: float = 0.5, positive_bias: float = 1.0, init: str = "scaled",
                 channels_last: bool | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise UserError(f"unknown model variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if init not in INITS:
            raise UserError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
        if width <= 0 or num_classes < 1:
            raise UserError(f"width must be > 0 and num_classes >= 1, got width={width}, "
                            f"num_classes={num_classes}")
        self.variant, self.num_classes, self.width = variant, num_classes, width
        towers = 1 if variant == "one-tower" else 2
        scale = width * (2 if towers == 1 else 1)
        widths = {name: max(1, round(w * scale)) for name, w in TOWER_WIDTHS.items()}
        placed = _check_devices(devices)[:towers]
        self.towers = nn.ModuleList(
            Tower(widths, towers, lrn=variant != "one-tower", pool_before_lrn=variant == "caffenet",
                  dropout=dropout).to(device) for device in placed)
        self.fc8 = nn.Linear(widths["fc7"] * towers, num_classes, device=placed[0])
        self.reset_parameters(positive_bias, init)
        if channels_last if channels_last is not None else placed[0].type == "cuda":
            self.to(memory_format=torch.channels_last)
        # Names never mention a device; values go to the CPU so any machine can load them.
        self.register_state_dict_post_hook(_state_dict_to_cpu)

    @torch.no_grad()
    def reset_parameters(self, positive_bias: float = 1.0, init: str = "scaled") -> None:
        """Weights N(0, std); biases `positive_bias` in conv2/4/5, fc6/7, else 0 (the paper's layout).

        "paper": std 0.01 in every layer, at any width. "scaled": std 0.01 in conv1 and
        0.01 / sqrt(width) after it, the same as "paper" at width 1. Every layer after conv1 has a
        fan-in proportional to `width`, so the paper's std at width 0.25 halves each layer's gain
        (std x sqrt(fan-in)); over conv2..fc7 the image signal shrinks ~64x against the constant
        biases, and a narrow model's loss sits at ln(classes) (docs/model.md, "Init").
        """
        later_std = PAPER_STD / math.sqrt(self.width) if init == "scaled" else PAPER_STD
        for name, module in self.named_modules():
            # Meta tensors (shape-only models, `alexnet summary`) hold no values; normal_ on them
            # would import torch._dynamo, seconds for nothing.
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.is_meta:
                module.weight.normal_(0.0, PAPER_STD if name.endswith("conv1") else later_std)
                module.bias.fill_(positive_bias if name.split(".")[-1] in POSITIVE_BIAS_LAYERS else 0.0)

    @property
    def devices(self) -> list[torch.device]:
        """Where each tower lives now (follows `.to()`)."""
        return [tower.conv1.weight.device for tower in self.towers]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float NCHW images (224 or 227 square, any memory format), on devices[0] → logits on devices[0]."""
        return self.fc8(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The last hidden layer: both towers' fc7 outputs (after ReLU and, in training, dropout) on
        devices[0], [B, 2 x fc7 width] (4096 at width 1): the vectors Figure 4's neighbours compare."""
        check_input_size(images.shape)
        pad_w, pad_h = conv1_padding(images.shape[-1]), conv1_padding(images.shape[-2])
        if pad_w or pad_h:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        devices = self.devices
        # The one copy outside the paper's connections: every tower sees the image.
        x = [tower.lower(images.to(d)) for tower, d in zip(self.towers, devices)]
        x = [tower.upper(gather(x, d)) for tower, d in zip(self.towers, devices)]   # conv3
        x = [tower.hidden6(gather(x, d)) for tower, d in zip(self.towers, devices)]  # fc6
        x = [tower.hidden7(gather(x, d)) for tower, d in zip(self.towers, devices)]  # fc7
        return gather(x, devices[0])


def _state_dict_to_cpu(module: nn.Module, state: dict, prefix: str, metadata: dict) -> None:
    for key, value in state.items():
        if key.startswith(prefix) and not isinstance(value, nn.Parameter):  # keep_vars=True: leave as is
            state[key] = value.cpu()


class GroupedAlexNet(nn.Module):
    """The two-tower network as one plain single-device module: grouped convolutions, LRN per group.

    The reference the two-tower model is tested and benchmarked against; `from_towers` copies the
    weights of an AlexNet ("paper" or "caffenet") so both compute the same function.
    """

    def __init__(self, num_classes: int = 1000, variant: str = "paper", *, width: float = 1.0,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if variant not in ("paper", "caffenet"):
            raise UserError(f"GroupedAlexNet has two groups: variant 'paper' or 'caffenet', not {variant!r}")
        w = {name: 2 * max(1, round(c * width)) for name, c in TOWER_WIDTHS.items()}  # both towers
        self.pool_before_lrn = variant == "caffenet"
        self.conv1 = nn.Conv2d(3, w["conv1"], 11, stride=4)
        self.conv2 = nn.Conv2d(w["conv1"], w["conv2"], 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(w["conv2"], w["conv3"], 3, padding=1)
        self.conv4 = nn.Conv2d(w["conv3"], w["conv4"], 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(w["conv4"], w["conv5"], 3, padding=1, groups=2)
        self.fc6 = nn.Linear(w["conv5"] * POOL_MAPS * POOL_MAPS, w["fc6"])
        self.fc7 = nn.Linear(w["fc6"], w["fc7"])
        self.fc8 = nn.Linear(w["fc7"], num_classes)
        self.lrn, self.dropout = PaperLRN(), nn.Dropout(dropout)

    def _norm_pool(self, x: torch.Tensor) -> torch.Tensor:
        def norm(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.lrn(group) for group in t.chunk(2, dim=1)], dim=1)
        pool = lambda t: F.max_pool2d(t, 3, 2)  # noqa: E731
        return norm(pool(x)) if self.pool_before_lrn else pool(norm(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_input_size(images.shape)
        images = F.pad(images, (0, conv1_padding(images.shape[-1]), 0, conv1_padding(images.shape[-2])))
        x = self._norm_pool(F.relu(self.conv1(images)))
        x = self._norm_pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv5(F.relu(self.conv4(F.relu(self.conv3(x))))))
        x = torch.flatten(F.max_pool2d(x, 3, 2), 1)
        x = self.dropout(F.relu(self.fc6(x)))
        x = self.dropout(F.relu(self.fc7(x)))
        return self.fc8(x)

    @classmethod
    def from_towers(cls, model: AlexNet, dropout: float = 0.5) -> GroupedAlexNet:
        """The same weights: each grouped layer is the towers' layers stacked along output channels."""
        grouped = cls(model.num_classes, model.variant, width=model.width, dropout=dropout)
        state = model.state_dict()
        merged = {f"fc8.{kind}": state[f"fc8.{kind}"] for kind in ("weight", "bias")}
        for layer in TOWER_WIDTHS:
            for kind in ("weight", "bias"):
                merged[f"{layer}.{kind}"] = torch.cat([state[f"towers.{t}.{layer}.{kind}"] for t in (0, 1)])
        grouped.load_state_dict(merged)
        return grouped
