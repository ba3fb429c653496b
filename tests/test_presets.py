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
        ({"n_dis": "0"}, "invalid training config: n_dis=0 (should be 1 to 100)"),
        # bounded: a learning rate that overflows, a grid or standing-statistics pass that eats the worker's memory/time
        ({"lr_g": "1e30"}, "invalid training config: lr_g=1e+30 (should be greater than 0, at most 1)"),
        ({"lr_d": "1e300"}, "lr_d=1e+300 (should be greater than 0, at most 1)"),
        ({"samples_per_class": "100000"}, "samples_per_class=100000 (should be 1 to 64 (columns of samples.png))"),
        ({"standing_stats": "100000000"}, "standing_stats=100000000 (should be 0 to 10000 batches)"),
        ({"betas": "0.5"}, "expected 2 comma-separated numbers"),
        ({"diffaug": "colour"}, "unknown DiffAugment policies"),
        ({"compile": "maybe"}, "expected true or false"),
    ],
)
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(ValueError, match=None) as info:
        resolve_recipe("resnet", overrides)
    assert message in str(info.value)


@pytest.mark.parametrize("overrides, message", [({"lr": "1e300"}, "lr=1e+300 (should be greater than 0, at most 10)"),
                                               ({"weight_decay": "5"}, "weight_decay=5.0 (should be in [0, 1])")])
def test_bad_classifier_overrides_are_refused(overrides, message):
    with pytest.raises(ValueError) as info:
        resolve_recipe("classifier", overrides)
    assert message in str(info.value)


def test_a_run_whose_losses_stop_being_finite_fails_instead_of_exporting_nan_weights():
    """A learning rate that passes every bound can still blow a run up: the first log interval whose mean loss is
    NaN or infinite stops it with TrainingDiverged (its job fails), for the GAN and the classifier alike."""
    import torch

    from cganmodel.classifier import ClassifierConfig
    from cganmodel.data import ImageData
    from cganmodel.gan import GANConfig
    from cganmodel.presets import ClassifierTrainConfig, TrainConfig
    from cganmodel.train import Trainer
    from cganmodel.train_classifier import ClassifierTrainer
    from cganmodel.training import TrainingDiverged

    data = ImageData(torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8), torch.arange(16) % 2, ["a", "b"])
    gan = Trainer(GANConfig(preset="mlp", num_classes=2, classes=["a", "b"]), TrainConfig(preset="mlp", steps=4, batch_size=8, log_every=2, checkpoint_every=0), data)
    with torch.no_grad():
        next(gan.G.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 2 \(d_loss nan, g_loss nan\): lower lr_g / lr_d"):
        gan.run()
    clf = ClassifierTrainer(ClassifierConfig(num_classes=2, classes=["a", "b"]), ClassifierTrainConfig(steps=4, batch_size=8, progress_every=2, checkpoint_every=4), data)
    with torch.no_grad():
        next(clf.model.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 2 \(loss nan\): lower lr"):
        clf.run()


def test_a_diverged_run_saves_no_checkpoint_between_two_log_lines():
    """checkpoint_every shorter than log_every: the losses since the last log line are checked before each
    checkpoint, so a NaN state is never saved (a resume would continue from it)."""
    import torch

    from cganmodel.classifier import ClassifierConfig
    from cganmodel.data import ImageData
    from cganmodel.gan import GANConfig
    from cganmodel.presets import ClassifierTrainConfig, TrainConfig
    from cganmodel.train import Trainer
    from cganmodel.train_classifier import ClassifierTrainer
    from cganmodel.training import TrainingDiverged

    data = ImageData(torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8), torch.arange(16) % 2, ["a", "b"])
    saved: list[int] = []
    gan = Trainer(GANConfig(preset="mlp", num_classes=2, classes=["a", "b"]), TrainConfig(preset="mlp", steps=8, batch_size=8, log_every=4, checkpoint_every=1), data)
    gan.run(on_checkpoint=lambda step, files: saved.append(step))
    assert saved == [1, 2, 3, 4, 5, 6, 7, 8]
    saved.clear()
    gan = Trainer(GANConfig(preset="mlp", num_classes=2, classes=["a", "b"]), TrainConfig(preset="mlp", steps=8, batch_size=8, log_every=4, checkpoint_every=1), data)
    with torch.no_grad():
        next(gan.G.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 1 \(d_loss nan, g_loss nan\)"):
        gan.run(on_checkpoint=lambda step, files: saved.append(step))
    assert saved == []
    clf = ClassifierTrainer(ClassifierConfig(num_classes=2, classes=["a", "b"]), ClassifierTrainConfig(steps=4, batch_size=8, progress_every=4, checkpoint_every=1), data)
    with torch.no_grad():
        next(clf.model.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 1 \(loss nan\)"):
        clf.run(on_checkpoint=lambda step, files: saved.append(step))
    assert saved == []


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
