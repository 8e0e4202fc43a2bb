"""The run config: paper defaults, files, --set overrides, and clear errors for bad values."""

import pytest

from pipeline.errors import UserError
from trainer.config import TrainConfig, config_from_dict, resolve_config


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.epochs) == (128, 0.01, 0.9, 5e-4, 90)
    assert (c.crop, c.pca_std, c.dropout, c.lr_factor, c.max_reductions) == (224, 0.1, 0.5, 0.1, 3)


def test_file_then_flags_then_set(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    # PyYAML reads 1e-2 as a string (YAML 1.1): it must still become the float 0.01
    yaml_file.write_text("data: /d\nname: a\nlr: 1e-2\nbatch_size: 64\nwidth: 0.5\nscale_lr: yes\n")
    c = resolve_config(str(yaml_file), ["batch_size=32", "pca-std=0"], name="b", workers=None)
    assert (c.data, c.name, c.lr, c.batch_size, c.width, c.scale_lr, c.pca_std) == \
        ("/d", "b", 0.01, 32, 0.5, True, 0.0)
    assert c.workers == 1  # a flag left out (None) keeps the default

    toml_file = tmp_path / "run.toml"
    toml_file.write_text('data = "/d"\nname = "t"\nepochs = 2\ndecay_biases = true\n')
    c = resolve_config(str(toml_file))
    assert (c.epochs, c.decay_biases) == (2, True)
    assert config_from_dict(c.to_dict()) == c


@pytest.mark.parametrize("item, words", [
    ("batch_size=abc", ["batch_size", "'abc'", "int"]),
    ("batch_size=1.5", ["batch_size", "int"]),
    ("lr=0", ["lr", "greater than 0"]),
    ("momentum=2", ["momentum", "at most 1"]),
    ("gpus_per_worker=3", ["gpus_per_worker", "one of 0, 1, 2"]),
    ("crop=64", ["crop", "at least 223"]),
    ("deterministic=maybe", ["deterministic", "one of auto, true, false"]),
    ("precision=fp8", ["precision", "one of auto, fp32, bf16, fp16"]),
    ("optimizer=adam", ["optimizer", "one of sgd, lars"]),
    ("warmup_epochs=-1", ["warmup_epochs", "at least 0"]),
    ("lars_coefficient=0", ["lars_coefficient", "greater than 0"]),
    ("compile=maybe", ["compile", "bool"]),
    ("lrr=0.1", ["unknown config key 'lrr'", "did you mean 'lr'"]),
    ("lr", ["expected key=value"]),
])
def test_bad_overrides_name_the_key(item, words):
    with pytest.raises(UserError) as error:
        resolve_config(None, [item], data="/d", name="n")
    assert all(w in str(error.value) for w in words), str(error.value)


def test_bad_files_name_the_file(tmp_path):
    bad_type = tmp_path / "bad.yaml"
    bad_type.write_text("data: /d\nname: n\nepochs: [1, 2]\n")
    with pytest.raises(UserError, match=f"config file {bad_type}: epochs"):
        resolve_config(str(bad_type))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 0.1\n")
    with pytest.raises(UserError, match=f"config file {unknown}: unknown config key 'learning_rate'"):
        resolve_config(str(unknown))
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [0.1\n")
    with pytest.raises(UserError, match="cannot be parsed"):
        resolve_config(str(broken))
    with pytest.raises(UserError, match="does not exist"):
        resolve_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match="no data given"):
        resolve_config(None, [], name="n")
    with pytest.raises(UserError, match="one folder name"):
        resolve_config(None, [], data="/d", name="a/b")


def test_deterministic_takes_the_old_booleans_and_the_new_auto(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data: /d\nname: n\ndeterministic: false\nprecision: BF16\n")
    c = resolve_config(str(yaml_file))
    assert (c.deterministic, c.precision) == ("false", "bf16")
    assert resolve_config(None, ["deterministic=true"], data="/d", name="n").deterministic == "true"
    assert resolve_config(None, (), data="/d", name="n").deterministic == "auto"
    # a run folder's config.json written before `auto` existed still reads back
    old = {**c.to_dict(), "deterministic": True}
    assert config_from_dict(old).deterministic == "true"


def test_shipped_recipes_by_name(tmp_path, monkeypatch):
    from trainer.config import recipes

    assert {"imagenet", "imagenette"} <= set(recipes())
    # the paper's recipe is the defaults written out: a key that drifts from them fails here
    paper = resolve_config("imagenet", data="/d", name="n")
    assert paper == TrainConfig(data="/d", name="n")
    small = resolve_config("imagenette", data="/d", name="n")
    assert (small.batch_size, small.lr, small.momentum, small.weight_decay, small.dropout, small.pca_std,
            small.crop, small.max_reductions) == (128, 0.01, 0.9, 5e-4, 0.5, 0.1, 224, 3)
    # a file of the user's wins over a recipe of the same name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenette").write_text("lr: 0.5\n")
    assert resolve_config("imagenette", data="/d", name="n").lr == 0.5
    with pytest.raises(UserError, match=r"config file imagenet-typo does not exist \(the shipped recipes: "):
        resolve_config("imagenet-typo", data="/d", name="n")
