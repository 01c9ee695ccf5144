"""Generation accuracy: the full-data reference classifier scores real images high, wrong labels low."""
import pytest

from minimaxdd.evaluation.reference_classifier import ReferenceConfig, generation_accuracy


@pytest.mark.slow      # trains the reference classifier twice: ~12 s on 2 CPU cores
def test_generation_accuracy_scores_real_images_high_and_wrong_labels_low(digits):
    cfg = ReferenceConfig()      # the default schedule: the session's cache serves it to every test that asks
    x, y = digits.x_test[:200], digits.y_test[:200]
    right = generation_accuracy(digits, x, y, cfg)
    wrong = generation_accuracy(digits, x, (y + 1) % 10, cfg)
    assert right["generation_accuracy"] > 0.8 and wrong["generation_accuracy"] < 0.2
    assert abs(right["reference_test_accuracy"] - right["generation_accuracy"]) < 0.1


def test_the_soft_label_teacher_is_cached_frozen_and_never_reads_the_test_set(digits, tmp_path, monkeypatch):
    import torch

    import minimaxdd.evaluation.reference_classifier as reference
    from minimaxdd.data.dataset import Dataset
    from minimaxdd.evaluation.reference_classifier import teacher_classifier

    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path))
    t = teacher_classifier(digits, "convnet3", epochs=1, precision="fp32")
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert len(list((tmp_path / "reference").glob("*.pt"))) == 1

    def no_training(*a, **k):
        raise AssertionError("the teacher was retrained instead of loaded from the cache")

    # another test set (here: noise and wrong labels) is the same teacher, from the cache: the test set
    # neither trains nor selects it
    g = torch.Generator().manual_seed(0)
    noisy = Dataset(digits.name, digits.x_train, digits.y_train,
                    torch.randint(0, 256, digits.x_test.shape, generator=g, dtype=torch.uint8),
                    (digits.y_test + 1) % 10, list(digits.class_names))
    monkeypatch.setattr(reference, "train_classifier", no_training)
    again = teacher_classifier(noisy, "convnet3", epochs=1, precision="fp32")
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), again.state_dict().values()))
    # at another evaluation size the teacher is another network (it sees that size), so it trains
    with pytest.raises(AssertionError, match="retrained"):
        teacher_classifier(digits, "convnet3", image_size=16, epochs=1, precision="fp32")


def test_reference_features_are_embedded_once_per_process_and_per_dataset(digits, tmp_path, monkeypatch):
    import torch

    import minimaxdd.evaluation.reference_classifier as reference
    from minimaxdd.data.dataset import Dataset

    monkeypatch.setenv("MINIMAXDD_CACHE", str(tmp_path))
    calls = []
    real_embed = reference.embed

    def counted(model, x, stats, batch_size=512):
        calls.append(len(x))
        return real_embed(model, x, stats, batch_size)

    monkeypatch.setattr(reference, "embed", counted)
    first = reference.reference_features(digits, "cpu", epochs=1)
    again = reference.reference_features(digits, "cpu", epochs=1)
    assert calls == [len(digits.x_train)] and again is first          # the second call embeds nothing
    assert torch.allclose(first.norm(dim=1), torch.ones(len(first)))   # unit rows
    # other training images are another dataset: embedded afresh, never served the first one's rows
    fewer = Dataset(digits.name, digits.x_train[:300], digits.y_train[:300], digits.x_test, digits.y_test,
                    list(digits.class_names))
    other = reference.reference_features(fewer, "cpu", epochs=1)
    assert calls == [len(digits.x_train), 300] and other.shape[0] == 300
    # another classifier schedule is another classifier: embedded afresh
    reference.reference_features(digits, "cpu", epochs=2)
    assert len(calls) == 3
