"""Generation accuracy: the full-data reference classifier scores real images high, wrong labels low."""
import pytest

from minimaxdd.evaluation.reference_classifier import ReferenceConfig, generation_accuracy


@pytest.mark.slow      # trains the reference classifier twice: ~12 s on 2 CPU cores
def test_generation_accuracy_scores_real_images_high_and_wrong_labels_low(digits):
    cfg = ReferenceConfig(epochs=30)
    x, y = digits.x_test[:200], digits.y_test[:200]
    right = generation_accuracy(digits, x, y, cfg)
    wrong = generation_accuracy(digits, x, (y + 1) % 10, cfg)
    assert right["generation_accuracy"] > 0.8 and wrong["generation_accuracy"] < 0.2
    assert abs(right["reference_test_accuracy"] - right["generation_accuracy"]) < 0.1
