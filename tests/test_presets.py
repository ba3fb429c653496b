"""One table of presets: defaults, overrides (--set), validation, and the same recipe everywhere."""
from __future__ import annotations

import pytest

from cganmodel.presets import PRESETS, ClassifierTrainConfig, TrainConfig, resolve_recipe
from scheduler.errors import InvalidInput
from scheduler.specs import TrainSpec
from scheduler.submission import TrainRequest, train_spec


def test_every_recipe_field_has_one_default_in_the_table():
    for name, preset in PRESETS.items():
        config = ClassifierTrainConfig() if preset.kind == "classifier" else TrainConfig(preset=name)
        resolved = config.to_dict()
        resolved.pop("preset", None)
        assert set(resolved) == set(preset.recipe), name
        assert resolved == {k: list(v) if isinstance(v, tuple) else v for k, v in preset.recipe.items()}


def test_classifier_recipe_is_the_shipped_one():
    recipe = resolve_recipe("classifier")
    assert recipe["batch_size"] == 256 and recipe["lr"] == 0.08 and recipe["checkpoint_every"] == 500


def test_overrides_are_typed_from_the_defaults():
    recipe = resolve_recipe("resnet", {"lr_g": "1e-4", "n_dis": "1", "betas": "0.5,0.9", "diffaug": "", "compile": "true"})
    assert recipe["lr_g"] == 1e-4 and recipe["n_dis"] == 1 and recipe["betas"] == [0.5, 0.9]
    assert recipe["diffaug"] == "" and recipe["compile"] is True and recipe["lr_d"] == 2e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"nope": "1"}, "--set nope: unknown key for preset 'resnet'"),
        ({"lr_g": "abc"}, "--set lr_g=abc"),
        ({"lr_g": "nan"}, "not a finite number"),
        ({"n_dis": "0"}, "invalid training config: n_dis=0 (should be at least 1)"),
        ({"betas": "0.5"}, "expected 2 comma-separated numbers"),
        ({"diffaug": "colour"}, "unknown DiffAugment policies"),
        ({"compile": "maybe"}, "expected true or false"),
    ],
)
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(ValueError, match=None) as info:
        resolve_recipe("resnet", overrides)
    assert message in str(info.value)


def test_train_request_to_spec(tmp_path):
    from PIL import Image

    for i in range(8):  # a train dataset must be indexable at submit and hold one batch (two classes: a classifier)
        name = ("cat", "dog")[i % 2]
        (tmp_path / name).mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name / f"{i}.png")
    spec = train_spec(TrainRequest(preset="classifier", overrides=("lr=0.05",), steps=10, batch_size=8, dataset=str(tmp_path)))
    assert spec.steps == 10 and spec.recipe["lr"] == 0.05 and spec.recipe["batch_size"] == 8
    with pytest.raises(InvalidInput, match="has 8 images, fewer than the batch size 256"):
        train_spec(TrainRequest(preset="classifier", dataset=str(tmp_path)))
    with pytest.raises(InvalidInput, match="expected KEY=VALUE"):
        train_spec(TrainRequest(overrides=("lr_g",), dataset=str(tmp_path)))
    with pytest.raises(InvalidInput, match="unknown preset 'gpt'"):
        train_spec(TrainRequest(preset="gpt", dataset=str(tmp_path)))


def test_rows_written_before_the_submit_rules_still_parse():
    """batch size 1 and min_confidence 1 are refused at submit; rows that hold them (failed jobs) still parse."""
    from scheduler.specs import GenerateSpec

    assert TrainSpec.model_validate({"kind": "train", "preset": "mlp", "recipe": {"batch_size": 1}}).recipe["batch_size"] == 1
    assert GenerateSpec.model_validate({"kind": "generate", "model": "default:1", "counts": {"cat": 2}, "min_confidence": 1.0,
                                        "classifier": "default-classifier:1"}).min_confidence == 1.0


def test_rows_written_before_recipes_still_parse():
    old = {"kind": "train", "preset": "mlp", "dataset": "cifar10", "steps": 7, "batch_size": 16, "checkpoint_every": 3, "seed": 2}
    spec = TrainSpec.model_validate(old)
    assert spec.steps == 7 and spec.recipe["batch_size"] == 16 and spec.recipe["seed"] == 2 and spec.recipe["n_dis"] == 1
