"""From a typed generate request to a resolved generate spec, and every bad input refused with one clear message."""
from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import db
from scheduler.errors import InvalidInput
from scheduler.model_registry import ModelRegistry
from scheduler.settings import Settings
from scheduler.submission import GenerateRequest, generate_spec

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def ctx(tmp_path):
    settings = Settings(data_dir=tmp_path, max_count=100_000)
    db.upgrade(settings)
    models = ModelRegistry(db.get_engine(settings))
    models.register(name="gen", kind="generator", job_id=None, weights_key="k", meta={"kind": "generator", "classes": CLASSES})
    models.register(name="clf", kind="classifier", job_id=None, weights_key="c", meta={"kind": "classifier", "classes": CLASSES})
    return models, settings


def spec(ctx, **options):
    models, settings = ctx
    return generate_spec(GenerateRequest(model="gen", **options), models, settings)


def test_single_label_count(ctx):
    s = spec(ctx, labels=["frog"], count=50_000)
    assert s.counts == {"frog": 50_000} and s.model == "gen:1" and s.total == 50_000
    assert s.num_shards == 20 and s.shard_labels(19) == ["frog"] * 2500


def test_balanced_count_and_per_class(ctx):
    assert spec(ctx, balanced=True, count=50_000).counts == {c: 5000 for c in CLASSES}
    assert spec(ctx, balanced=True, per_class=7).counts == {c: 7 for c in CLASSES}
    uneven = spec(ctx, labels=["dog", "cat"], count=5)
    assert uneven.counts == {"cat": 3, "dog": 2}  # the remainder to the first in the model's order, as --help says
    assert spec(ctx, labels=["cat", "dog"], count=5).counts == uneven.counts  # whatever the order of the flags
    assert spec(ctx, labels=["cat", "cat"], per_class=3).counts == {"cat": 3}


def test_shards_mix_classes_proportionally(ctx):
    s = spec(ctx, balanced=True, per_class=100, shard_size=50)
    for index in range(s.num_shards):
        labels = s.shard_labels(index)
        assert sorted(set(labels)) == sorted(CLASSES) and len(labels) == 50
    everything = [name for i in range(s.num_shards) for name in s.shard_labels(i)]
    assert {c: everything.count(c) for c in CLASSES} == s.counts


def test_fill_to_generates_each_deficit(ctx, tmp_path):
    root = tmp_path / "imbalanced"
    for name, n in {"cat": 3, "dog": 5, "frog": 1}.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(b"x")
    s = spec(ctx, fill_to=5, dataset=str(root))
    assert s.counts == {"cat": 2, "dog": 0, "frog": 4}  # the dataset's classes only, not every class of the model
    assert s.request["fill_to"] == 5
    assert s._absent == ["airplane", "automobile", "bird", "deer", "horse", "ship", "truck"]  # named by the submit



def test_fill_to_over_the_builtin_cifar10_uses_its_known_counts(ctx):
    """CIFAR-10's train split has 5,000 images a class: --fill-to 5003 --dataset cifar10 asks for 3 a class,
    with nothing downloaded (it was refused as "data source 'cifar10' does not exist (expected 'cifar10', ...)")."""
    s = spec(ctx, fill_to=5003, dataset="cifar10")
    assert s.counts == dict.fromkeys(CLASSES, 3) and s.request["dataset"] == "cifar10"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(labels=["frog"], balanced=True, count=10), "--label and --balanced conflict"),
        (dict(count=10), "say which classes"),
        (dict(labels=["frgo"], count=10), "unknown label 'frgo'"),
        (dict(labels=["frog"], count=0), "--count must be at least 1"),
        (dict(labels=["frog"], count=-5), "--count must be at least 1"),
        (dict(labels=["frog"], count=100_001), "above the maximum of 100000"),
        (dict(balanced=True, per_class=20_000), "above the maximum"),
        (dict(labels=["frog"], count=10, per_class=1), "exactly one of --count"),
        (dict(labels=["frog"]), "exactly one of --count"),
        (dict(labels=["frog"], count=10, min_confidence=0), "invalid --min-confidence 0: should be greater than 0"),
        (dict(labels=["frog"], count=10, min_confidence=1.5), "invalid --min-confidence 1.5: should be less than 1"),
        (dict(labels=["frog"], count=10, min_confidence=1.0), "invalid --min-confidence 1.0: should be less than 1"),  # never reached
        (dict(labels=["frog"], count=10, classifier="default-classifier"), "--classifier goes with --min-confidence"),
        (dict(labels=["frog"], count=10, format="zip"), "invalid --format 'zip': should be 'webdataset', 'imagefolder' or 'npz'"),
        (dict(fill_to=10), "--fill-to needs --dataset"),
        (dict(fill_to=10, dataset="/nonexistent/data"), "--dataset: data source '/nonexistent/data' does not exist"),
        (dict(fill_to=10, count=3, dataset="/x"), "drop --count"),
        (dict(labels=["frog"], count=10, dataset="/x"), "--dataset goes with --fill-to"),
        (dict(labels=["frog"], count=10, truncation=-1.0), "invalid --truncation -1.0: should be greater than or equal to 0.05"),
        (dict(labels=["frog"], count=10, shard_size=0), "invalid --shard-size 0: should be greater than 0"),
    ],
)
def test_bad_input_is_refused_clearly(ctx, options, message):
    with pytest.raises(InvalidInput) as info:
        spec(ctx, **options)
    assert message in str(info.value)


def test_unknown_label_lists_valid_names(ctx):
    with pytest.raises(InvalidInput, match="valid labels: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck"):
        spec(ctx, labels=["unicorn"], count=1)


def test_a_label_in_either_unicode_form_is_the_models_class(ctx, tmp_path):
    """A class folder made on macOS is stored decomposed (NFD); typed, the same name is composed (NFC)."""
    import unicodedata

    models, settings = ctx
    composed, decomposed = "chat_\u00e9", unicodedata.normalize("NFD", "chat_\u00e9")
    assert composed != decomposed
    models.register(name="fr", kind="generator", job_id=None, weights_key="k", meta={"kind": "generator", "classes": [decomposed, "chien"]})
    made = generate_spec(GenerateRequest(model="fr", labels=(composed,), count=3), models, settings)
    assert made.counts == {decomposed: 3}
    from harness.datasets import tiny_image_folder

    tiny_image_folder(tmp_path / "ds", classes=(composed, "chien"), per_class=2)
    filled = generate_spec(GenerateRequest(model="fr", fill_to=5, dataset=str(tmp_path / "ds")), models, settings)
    assert filled.counts == {decomposed: 3, "chien": 3}


def test_a_one_class_model_is_not_scored_by_a_classifier(ctx):
    models, settings = ctx
    models.register(name="solo", kind="generator", job_id=None, weights_key="k", meta={"kind": "generator", "classes": ["frog"]})
    with pytest.raises(InvalidInput, match="model solo:1 has one class: a classifier has nothing to tell it from"):
        generate_spec(GenerateRequest(model="solo", labels=("frog",), count=3, min_confidence=0.5), models, settings)
    assert generate_spec(GenerateRequest(model="solo", labels=("frog",), count=3), models, settings).counts == {"frog": 3}


def test_an_evaluation_without_a_classifier_is_the_inception_metrics_only(ctx):
    """--no-classifier: a one-class model (or one no classifier knows the classes of) gets its Inception FID;
    what would need the classifier, or measure nothing, is refused by flag."""
    from scheduler.submission import EvaluateRequest, evaluate_spec

    models, settings = ctx
    models.register(name="solo", kind="generator", job_id=None, weights_key="k", meta={"kind": "generator", "classes": ["cifar10-only-airplane"]})
    with pytest.raises(InvalidInput, match="model solo:1 has one class.*evaluate it with --no-classifier"):
        evaluate_spec(EvaluateRequest(model="solo"), models, settings)
    made = evaluate_spec(EvaluateRequest(model="gen", no_classifier=True), models, settings)
    assert made.classifier is None and made.inception and made.model == "gen:1"
    for request, message in (
        (EvaluateRequest(model="gen", no_classifier=True, classifier="clf"), "--classifier and --no-classifier exclude each other"),
        (EvaluateRequest(model="gen", no_classifier=True, inception=False), "--no-classifier with --no-inception leaves nothing to measure"),
        (EvaluateRequest(model="gen", no_classifier=True, downstream=True), "--downstream needs the scoring classifier"),
    ):
        with pytest.raises(InvalidInput, match=message):
            evaluate_spec(request, models, settings)


def test_unknown_model(ctx):
    models, settings = ctx
    with pytest.raises(InvalidInput, match="unknown model 'nope'"):
        generate_spec(GenerateRequest(model="nope", labels=["frog"], count=1), models, settings)
    with pytest.raises(InvalidInput, match="is a classifier, not a generator"):
        generate_spec(GenerateRequest(model="clf", labels=["frog"], count=1), models, settings)


def test_fill_to_refuses_unknown_classes_and_unreadable(ctx, tmp_path):
    root = tmp_path / "odd"
    (root / "unicorn").mkdir(parents=True)
    (root / "unicorn" / "a.png").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="classes unknown to model gen:1: unicorn"):
        spec(ctx, fill_to=5, dataset=str(root))
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tar at all")
    with pytest.raises(InvalidInput, match="cannot read tar archive"):
        spec(ctx, fill_to=5, dataset=str(broken))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInput, match="no image files found"):
        spec(ctx, fill_to=5, dataset=str(empty))


def test_min_confidence_resolves_classifier(ctx):
    s = spec(ctx, labels=["frog"], count=10, min_confidence=0.5, classifier="clf")
    assert s.classifier == "clf:1" and s.min_confidence == 0.5


def test_fill_to_reads_train_split_of_tar(ctx, tmp_path):
    import io
    import tarfile

    path = tmp_path / "set.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for split, n in (("train", 2), ("test", 9)):
            for i in range(n):
                info = tarfile.TarInfo(f"set/{split}/cat/{i}.jpg")
                info.size = 1
                archive.addfile(info, io.BytesIO(b"x"))
    assert spec(ctx, fill_to=5, dataset=str(path)).counts["cat"] == 3
    assert Path(path).exists()


def test_shipped_models_are_versioned(ctx, monkeypatch):
    """NAME is the last shipped version, NAME:N the N-th; an older version stays usable by old specs."""
    from scheduler import model_registry

    registry, _settings = ctx
    monkeypatch.setattr(model_registry, "BUILTIN_FILES", {"default": ("default-generator", "default-generator"), "default-classifier": ("default-classifier",)})
    assert registry.resolve("default", "generator").ref == "default:2"
    assert registry.resolve("default:latest", "generator").ref == "default:2"
    assert registry.resolve("default:1", "generator").weights_key == "builtin:default-generator.safetensors"
    with pytest.raises(InvalidInput, match=r"model default has no version 3; its versions: 1, 2 \(cganctl models list\)"):
        registry.resolve("default:3", "generator")
    assert [m.ref for m in registry.all() if m.name == "default"] == ["default:1", "default:2"]
    monkeypatch.setattr(model_registry, "BUILTIN_FILES", {"default": ("default-generator", "no-such-file"), "default-classifier": ("default-classifier",)})
    assert registry.resolve("default", "generator").ref == "default:1"  # versions whose files are not installed are skipped
