"""How a step computes: number format (`precision`), kernel choice (`deterministic`), `compile`.

precision
    fp32    IEEE float32 everywhere (TF32 aside, see below).
    bf16    autocast to bfloat16: convolutions and matmuls in bf16, weights, gradients and the
            optimiser in float32. Same exponent range as float32, so no loss scaling.
    fp16    autocast to float16 with a gradient scaler (float16 underflows small gradients): the loss
            is multiplied before backward and the gradients divided before the step; a step whose
            gradients overflow is skipped and the scale halved. The scaler's state is checkpointed.
    auto    bf16 on a CUDA device that supports it, fp32 elsewhere (the CPU's bf16 is slower than
            its fp32 on most CPUs without AMX).
    LRN computes in float32 under any of them (trainer/model.py), and so does the loss: the logits are
    cast to float32 before cross-entropy.

deterministic
    true    today's kernels: on the CPU bitwise-reproducible (`torch.use_deterministic_algorithms`),
            on CUDA cuDNN's deterministic algorithms with its autotuner off.
    false   the fast path: cuDNN autotuner on, TF32 allowed in float32 matmuls and convolutions
            (10-bit mantissa inputs, float32 accumulation), nondeterministic CPU kernels allowed.
    auto    true on the CPU, false on CUDA: GPU runs are not bitwise reproducible anyway (max-pool's
            backward accumulates with atomics), so the fast kernels cost nothing that held.

compile
    `compile_model` compiles the model in place (`nn.Module.compile`): parameters and buffers keep
    their names, so checkpoints hold the same keys compiled or not (no `_orig_mod.` prefix) and
    either kind of run resumes the other's checkpoints.
"""

from __future__ import annotations

import contextlib
import os

import torch

from pipeline.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DETERMINISTIC = ("auto", "true", "false")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision in force on `device`: `auto` decided, an impossible request a UserError."""
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision!r}: must be one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise UserError(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                        f"arithmetic; use precision=fp16 (with its gradient scaler) or fp32")
    return precision


class Precision:
    """The number format of one worker's steps: its autocast region and (fp16) gradient scaler."""

    def __init__(self, precision: str, device: torch.device):
        self.name = resolve_precision(precision, device)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.name == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.name])

    def describe(self) -> str:
        return precision_text(self.name)

    def state_dict(self) -> dict:
        return self.scaler.state_dict()  # {} when no scaler is in use

    def load_state_dict(self, state: dict) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
        # an fp16 run resuming a bf16/fp32 checkpoint starts a fresh scale; the reverse drops it


def precision_text(name: str) -> str:
    if name == "fp32":
        return "precision fp32"
    scaler = ", gradient scaler" if name == "fp16" else ""
    return f"precision {name} (autocast{scaler}; LRN and loss in fp32)"


def deterministic_in_force(deterministic: str, device: torch.device) -> bool:
    if deterministic not in DETERMINISTIC:
        raise UserError(f"deterministic={deterministic!r}: must be one of {', '.join(DETERMINISTIC)}")
    return deterministic == "true" or (deterministic == "auto" and device.type != "cuda")


def set_up_kernels(deterministic: str, device: torch.device) -> str:
    """Choose kernels for this process's steps; returns how, in words, for the console."""
    exact = deterministic_in_force(deterministic, device)
    torch.backends.cudnn.benchmark = not exact
    torch.backends.cudnn.deterministic = exact
    if exact and device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    elif not exact:
        torch.use_deterministic_algorithms(False)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return kernels_text(exact, device.type == "cuda")


def kernels_text(exact: bool, gpu: bool) -> str:
    if exact:
        return "deterministic cuDNN kernels" if gpu else "deterministic kernels (bitwise reproducible)"
    return "fast kernels (cuDNN autotuner, TF32)" if gpu else "fast kernels"


def compile_model(model: torch.nn.Module, backend: str | None = None) -> torch.nn.Module:
    """Compile `model` in place and return it: its state_dict keys stay those of the eager model.
    Towers on two devices compile as one graph with the copies between them in it. The backend is
    inductor unless given, or ALEXNET_DEBUG_COMPILE_BACKEND names another: the suite's end-to-end
    compiled run takes aot_eager (dynamo's capture, DDP's graph breaks and the compiled module's
    state_dict as with inductor, without inductor's minutes of C++ on two cores)."""
    model.compile(backend=backend or os.environ.get("ALEXNET_DEBUG_COMPILE_BACKEND", "inductor"))
    return model


def plan_text(precision: str, deterministic: str, compiled: bool, gpu: bool) -> str:
    """What the driver can say before any worker starts (the console's first line). On GPUs `auto`
    depends on the GPU, which a driver may not have: rank 0 prints the precision it took."""
    device = torch.device("cuda" if gpu else "cpu")
    if precision == "auto" and gpu:
        text = "precision auto (bf16 on GPUs that have it, else fp32; rank 0 says which)"
    else:  # what the GPU can do is rank 0's to check (resolve_precision); the driver may have none
        text = precision_text(precision if gpu else resolve_precision(precision, device))
    kernels = kernels_text(deterministic_in_force(deterministic, device), gpu)
    return f"{text}, {kernels}{', compiled' if compiled else ''}"
