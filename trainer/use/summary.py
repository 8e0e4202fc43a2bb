"""`alexnet summary`: the network layer by layer (output shape, parameters, device), like Keras's summary.

Shapes come from a real forward pass of one image through the real model (built without its random
init, weights zeroed: a fraction of a second on the CPU), so the table cannot drift from the code.
The meta device would avoid even that, but its first use imports torch._dynamo: seconds longer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.errors import UserError
from trainer.model import AlexNet, check_input_size, default_devices

# Modules that change a shape or hold parameters; ReLU and dropout do neither and are left out.
_SHOWN = (nn.Conv2d, nn.Linear, nn.MaxPool2d)


def model_summary(variant: str = "paper", input_size: int = 224, num_classes: int = 1000,
                  width: float = 1.0, devices: Sequence[str] | None = None) -> dict:
    """Rows in forward order: {name, tower, output_shape (per image), params, device}; plus the total.

    `devices` only labels the rows (default: what AlexNet would use on this machine).
    """
    check_input_size((1, 3, input_size, input_size))
    labels = [str(d).strip() for d in (devices or default_devices())]
    if len(labels) != 2:
        raise UserError(f"--devices needs two devices, one per tower (e.g. cuda:0,cuda:1), got {','.join(labels)}")
    for label in labels:
        try:
            torch.device(label)
        except RuntimeError:
            raise UserError(f"--devices: {label!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    model = AlexNet(num_classes, variant, devices=("meta", "meta"), width=width).to_empty(device="cpu")
    for param in model.parameters():
        param.detach().zero_()
    rows: list[dict] = []

    def record(name: str, module: nn.Module):
        tower = int(name.split(".")[1]) if name.startswith("towers.") else 0
        short = name.split(".")[-1]

        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            rows.append({"name": short, "tower": tower, "output_shape": list(output.shape[1:]),
                         "params": sum(p.numel() for p in module.parameters()), "device": labels[tower]})
        return hook

    for name, module in model.named_modules():
        if isinstance(module, _SHOWN) or type(module).__name__ == "PaperLRN":
            module.register_forward_hook(record(name, module))
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(row["params"] for row in rows), "a parameterised layer is missing from the summary"
    return {"variant": variant, "input_size": input_size, "num_classes": num_classes, "width": width,
            "layers": rows, "total_params": total}


def format_summary(summary: dict) -> str:
    lines = [f"AlexNet variant={summary['variant']} input={summary['input_size']}x{summary['input_size']}"
             f" classes={summary['num_classes']} width={summary['width']}",
             f"{'layer':<14}{'output shape':<18}{'params':>14}  device"]
    for row in summary["layers"]:
        shape = "x".join(map(str, row["output_shape"]))
        lines.append(f"{row['name'] + ' (t' + str(row['tower']) + ')':<14}{shape:<18}"
                     f"{row['params']:>14,}  {row['device']}")
    lines.append(f"{'total':<32}{summary['total_params']:>14,}")
    return "\n".join(lines)


def print_summary(variant: str, input_size: int, num_classes: int, width: float, as_json: bool,
                  devices: Sequence[str] | None = None) -> int:
    summary = model_summary(variant, input_size, num_classes, width, devices)
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    return 0
