"""The one typed run config: the paper's values as defaults, a YAML/TOML file, then `--set key=value`.

Every field is flat (no sections) so that a file key, a `--set` key and the stored `config.json` key
are the same word. Values are checked for type and range before any Ray worker starts; a bad value is
a `UserError` naming the key, the value and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.errors import UserError

# The model variants and weight inits trainer/model.py builds, named here so that the CLI and the config
# check a name without loading torch
VARIANTS = ("paper", "caffenet", "one-tower")
INITS = ("scaled", "paper")  # see AlexNet.reset_parameters


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       above: float | None = None, choices: tuple | None = None) -> Any:
    """A field with its documentation and allowed range (min/max inclusive, above exclusive)."""
    return field(default=default, metadata={"help": help, "min": min, "max": max, "above": above,
                                            "choices": choices})


@dataclass
class TrainConfig:
    # --- the run: where data and results live, how many workers ---
    data: str = _f("", "dataset folder or URL written by `alexnet shard` (train and val splits)")
    name: str = _f("", "run name: the run folder is STORAGE/NAME")
    storage: str = _f("runs", "folder or URL (s3://, gs://) holding run folders")
    workers: int = _f(1, "Ray Train workers = model replicas (DDP across them); MIN:MAX runs elastically "
                      "(then this key holds MAX)", min=1)
    min_workers: int = _f(0, "elastic runs: the fewest replicas to train with (0: a fixed-size run; "
                          "`workers: MIN:MAX` sets it)", min=0)
    resize_check_seconds: float = _f(60.0, "elastic runs: how often Ray Train looks for room to grow", min=0.0)
    gpus_per_worker: int = _f(0, "GPUs per worker: 2 puts one tower per GPU, 0 runs on the CPU",
                              choices=(0, 1, 2))
    cpus_per_worker: int = _f(1, "CPUs reserved per worker (its torch threads)", min=1)
    wait_timeout: float = _f(1800.0, "seconds to wait for the nodes a run needs before giving up (0: no end)",
                             min=0.0)
    # --- the paper's optimisation (Krizhevsky et al. 2012, section 5) ---
    batch_size: int = _f(128, "images per replica per step (global batch = batch_size x workers)", min=1)
    lr: float = _f(0.01, "initial learning rate (not scaled by workers unless scale_lr)", above=0.0)
    scale_lr: bool = _f(False, "multiply lr by the number of workers (linear scaling rule)")
    momentum: float = _f(0.9, "momentum of PaperSGD's velocity", min=0.0, max=1.0)
    weight_decay: float = _f(5e-4, "weight decay of PaperSGD", min=0.0)
    decay_biases: bool = _f(False, "apply weight decay to biases too (cuda-convnet decayed weights only)")
    optimizer: str = _f("sgd", "sgd: the paper's PaperSGD; lars: PaperSGD with LARS's layer-wise trust ratio "
                        "on the weights (You et al. 2017; global batches past ~4K)", choices=("sgd", "lars"))
    lars_coefficient: float = _f(0.001, "optimizer=lars: the trust coefficient eta (trust = eta |w| / "
                                 "(|grad| + weight_decay |w|))", above=0.0, max=1.0)
    warmup_epochs: float = _f(0.0, "ramp the lr linearly up to its target over this many epochs, counted in "
                              "steps (Goyal et al. 2017; 0: none); plateaus count only after it", min=0.0)
    warmup_start: float = _f(0.1, "the warmup's first lr, as a fraction of its target", above=0.0, max=1.0)
    epochs: int = _f(90, "maximum number of epochs", min=1)
    steps_per_epoch: int = _f(0, "stop each epoch after this many steps (0: the whole epoch; smoke runs)",
                              min=0)
    # --- plateau schedule ---
    lr_factor: float = _f(0.1, "lr multiplier at each reduction", above=0.0, max=1.0)
    patience: int = _f(3, "epochs without improvement of validation top-1 error before a reduction",
                       min=1)
    threshold: float = _f(1e-3, "an error must drop by more than this (absolute, 0-1) to count as better",
                          min=0.0)
    max_reductions: int = _f(3, "after this many reductions, the next plateau ends training", min=0)
    # --- data and augmentation ---
    crop: int = _f(224, "training and evaluation crop side in pixels (the model takes 223 to 227)",
                   min=223, max=227)
    pca_std: float = _f(0.1, "std of the PCA colour noise alpha (0 turns it off)", min=0.0)
    loader_workers: int = _f(2, "decode processes per Ray Train worker", min=0)
    eval_batch_size: int = _f(128, "images per replica per validation step", min=1)
    # --- model ---
    variant: str = _f("paper", "model variant (see `alexnet summary`)")
    width: float = _f(1.0, "scale of every conv and hidden fc width (0.25: a small test model)",
                      above=0.0, max=4.0)
    dropout: float = _f(0.5, "dropout probability on fc6 and fc7", min=0.0, max=0.99)
    positive_bias: float = _f(1.0, "initial bias of conv2, conv4, conv5, fc6, fc7 (paper 1; Caffe 0.1)",
                              min=0.0)
    init: str = _f("scaled", "weight init: paper = N(0, 0.01) everywhere; scaled = std 0.01/sqrt(width) "
                   "after conv1 (the paper's at width 1; narrow models learn)", choices=INITS)
    # --- checkpoints, logs, failures ---
    checkpoint_every_steps: int = _f(1000, "also checkpoint every N steps within an epoch (0: epochs only)",
                                     min=0)
    keep_checkpoints: int = _f(3, "keep the last K checkpoints (the best one is kept apart)", min=1)
    log_every_steps: int = _f(20, "write a step record (loss, lr, images/s) every N steps", min=1)
    max_failures: int = _f(3, "worker failures to recover from before the run fails", min=0)
    seed: int = _f(0, "seed of initialisation, data order, augmentation and dropout", min=0)
    deterministic: str = _f("auto", "true: deterministic kernels (bitwise-reproducible on the CPU); false: "
                            "fast ones (cuDNN autotuner, TF32); auto: true on the CPU, false on GPUs",
                            choices=("auto", "true", "false"))
    precision: str = _f("auto", "number format of the steps: fp32, bf16 (autocast), fp16 (autocast and a "
                        "gradient scaler); auto: bf16 on GPUs that have it, else fp32",
                        choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = _f(False, "compile the model with torch.compile (minutes of compiling on the CPU; "
                       "checkpoints stay interchangeable with eager runs)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def lr_for(self, world_size: int) -> float:
        """The lr with `world_size` replicas (an elastic run's current count)."""
        return self.lr * world_size if self.scale_lr else self.lr

    @property
    def elastic(self) -> bool:
        return 0 < self.min_workers < self.workers

    @property
    def fewest_workers(self) -> int:
        """The replicas a run needs to start: MIN for an elastic run, else `workers`."""
        return self.min_workers if self.elastic else self.workers


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def describe_config() -> str:
    """Every key with its type, default, allowed values and meaning (`alexnet train --list-config`)."""
    lines = ["config keys (a --config file's keys, or --set KEY=VALUE; stored in RUN/config.json):", ""]
    for name, f in FIELDS.items():
        meta = f.metadata
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        allowed = []
        if meta["choices"] is not None:
            allowed.append("one of " + ", ".join(map(str, meta["choices"])))
        if meta["min"] is not None:
            allowed.append(f">= {meta['min']}")
        if meta["above"] is not None:
            allowed.append(f"> {meta['above']}")
        if meta["max"] is not None:
            allowed.append(f"<= {meta['max']}")
        if kind == "bool":
            allowed.append("true or false")
        default = json.dumps(f.default)
        lines.append(f"  {name} ({kind}, default {default}{'; ' + ', '.join(allowed) if allowed else ''})")
        lines.append(f"      {meta['help']}")
    return "\n".join(lines)


def _parse_value(key: str, raw: Any, source: str) -> Any:
    """Turn a file value or a `--set` string into the field's type, then check its range."""
    f = FIELDS[key]
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    bad = UserError(f"{source}: {key}={raw!r} is not a valid {kind} ({f.metadata['help']})")
    if kind == "bool":
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            value = raw.strip().lower() in ("true", "yes", "1", "on")
        else:
            raise bad
    elif kind == "int":
        if isinstance(raw, bool) or isinstance(raw, float):
            raise bad
        try:
            value = int(raw.strip()) if isinstance(raw, str) else int(raw)
        except (TypeError, ValueError):
            raise bad from None
    elif kind == "float":
        if isinstance(raw, bool):
            raise bad
        try:
            value = float(raw)  # PyYAML reads `1e-2` as a string: accept it here
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(value):
            raise bad
    elif isinstance(raw, bool) and "true" in (f.metadata["choices"] or ()):
        value = "true" if raw else "false"  # `deterministic: true` in YAML, or an older config.json
    else:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise bad
        value = str(raw) if f.metadata["choices"] is None else str(raw).strip().lower()
    _check_range(key, value, source)
    return value


def _check_range(key: str, value: Any, source: str) -> None:
    meta = FIELDS[key].metadata
    problems = []
    if meta["min"] is not None and value < meta["min"]:
        problems.append(f"at least {meta['min']}")
    if meta["max"] is not None and value > meta["max"]:
        problems.append(f"at most {meta['max']}")
    if meta["above"] is not None and value <= meta["above"]:
        problems.append(f"greater than {meta['above']}")
    if meta["choices"] is not None and value not in meta["choices"]:
        problems.append("one of " + ", ".join(map(str, meta["choices"])))
    if problems:
        raise UserError(f"{source}: {key}={value!r} is out of range: must be {' and '.join(problems)}")


def _unknown_key(key: str, source: str) -> UserError:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(FIELDS)}"
    return UserError(f"{source}: unknown config key {key!r}{hint}")


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1:2` as the base-60 integer 62: `workers: 1:2` must stay the text it looks like."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))


# The recipes shipped with the project (trainer/configs/NAME.yaml), given as `--config NAME`
RECIPES_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def recipes() -> list[str]:
    """Names of the shipped recipes: `imagenet` (the paper), `imagenette` (its recipe at that size), ..."""
    return sorted(name[:-5] for name in os.listdir(RECIPES_FOLDER) if name.endswith(".yaml"))


def config_file_path(name: str) -> str:
    """A path as given, or else a shipped recipe's name: a file of the user's always wins, so a recipe
    name never hides a file in the working directory."""
    if os.path.isfile(name):
        return name
    recipe = os.path.join(RECIPES_FOLDER, f"{name.removesuffix('.yaml')}.yaml")
    if os.sep not in name and os.path.isfile(recipe):
        return recipe
    raise UserError(f"config file {name} does not exist (the shipped recipes: {', '.join(recipes())})")


def read_config_file(path: str) -> dict:
    """A flat mapping from a .yaml/.yml/.toml/.json file or a shipped recipe's name; errors name the file."""
    path = config_file_path(path)
    try:
        with open(path, "rb") as f:
            text = f.read()
        if path.endswith(".toml"):
            data = tomllib.loads(text.decode())
        elif path.endswith(".json"):
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_YamlLoader) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"config file {path} cannot be parsed: {error}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def _set(values: dict[str, Any], key: str, raw: Any, source: str, later: bool = True) -> None:
    """One key into `values`; `workers` may be MIN:MAX (an elastic run: sets min_workers too). A plain
    count given `later` (a flag, --set) than the file means a fixed-size run again."""
    if key == "workers" and isinstance(raw, str) and ":" in raw:
        low, _, high = raw.partition(":")
        high_value = _parse_value("workers", high, source)
        low_value = _parse_value("workers", low, source)
        if low_value > high_value:
            raise UserError(f"{source}: workers={raw!r}: MIN must not exceed MAX in MIN:MAX")
        values["workers"], values["min_workers"] = high_value, (low_value if low_value < high_value else 0)
        return
    values[key] = _parse_value(key, raw, source)
    if key == "workers" and later:
        values["min_workers"] = 0  # a plain count keeps its meaning: a fixed-size run


def resolve_config(file: str | None = None, overrides: list[str] | tuple = (), **flags: Any) -> TrainConfig:
    """Defaults, then the file, then command-line flags (None = not given), then `--set` overrides."""
    values: dict[str, Any] = {}
    if file:
        for key, raw in read_config_file(file).items():
            if key not in FIELDS:
                raise _unknown_key(key, f"config file {file}")
            _set(values, key, raw, f"config file {file}", later=False)
    for key, raw in flags.items():
        if raw is not None:
            _set(values, key, raw, f"--{key.replace('_', '-')}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UserError(f"--set {item!r}: expected key=value")
        if key not in FIELDS:
            raise _unknown_key(key, f"--set {item}")
        _set(values, key, raw, f"--set {item}")
    config = TrainConfig(**values)
    if config.min_workers > config.workers:
        raise UserError(f"min_workers={config.min_workers} exceeds workers={config.workers}: give workers as MIN:MAX")
    for key in ("data", "name"):
        if not getattr(config, key):
            raise UserError(f"no {key} given: pass --{key} (or set '{key}' in the config file)")
    if "/" in config.name or config.name in (".", ".."):
        raise UserError(f"--name {config.name!r}: a run name is one folder name, without '/'")
    return config


def config_from_dict(data: dict, source: str = "stored config") -> TrainConfig:
    """Read back a stored config (checkpoint, config.json); unknown keys are an error."""
    values = {}
    for key, raw in data.items():
        if key not in FIELDS:
            raise _unknown_key(key, source)
        values[key] = _parse_value(key, raw, source)
    return TrainConfig(**values)
