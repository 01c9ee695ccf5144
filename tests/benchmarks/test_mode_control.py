"""benchmarks/mode_control.py: the control of mode-guided sampling writes the sampler's modes as a set."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from minimaxdd.data.synthetic import load_synthetic
from minimaxdd.diffusion.guides import class_modes

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mode_control", ROOT / "benchmarks" / "mode_control.py")
mode_control = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mode_control)


def clustered(n_classes=3, k=4, copies=5, seed=0):
    """Each class: k distinct random uint8 images, each repeated `copies` times (k exact clusters)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (n_classes, k, 1, 6, 6), generator=g, dtype=torch.uint8)
    x = protos.repeat_interleave(copies, dim=1).reshape(-1, 1, 6, 6)
    y = torch.arange(n_classes).repeat_interleave(k * copies)
    return x, y, protos


def test_exact_clusters_give_their_images_back_and_each_ipc_clusters_with_its_own_k():
    x, y, protos = clustered()
    sets = mode_control.mode_sets(x, y, 3, [2, 4], seed=0)
    big, labels = sets[4]
    assert big.dtype == np.uint8 and big.shape == (12, 1, 6, 6)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for c in range(3):   # every class's four prototypes, each once (the order is the sampler's, by cluster size)
        got = sorted(map(bytes, big[4 * c:4 * c + 4]))
        assert got == sorted(map(bytes, protos[c].numpy()))
    small, small_labels = sets[2]
    assert small_labels.tolist() == [0, 0, 1, 1, 2, 2]
    # k = 2 merges the four prototypes into two clusters: its modes are means, not two of the four images
    x2 = torch.tensor(small.astype(np.float64) / 127.5 - 1)
    want = class_modes(x.float() / 127.5 - 1, y, [0, 1, 2], 2, 0)
    assert (x2 - torch.cat([want[c] for c in range(3)]).double()).abs().max() <= 0.5 / 127.5 + 1e-6
    assert not np.array_equal(small, big.reshape(3, 4, 1, 6, 6)[:, :2].reshape(6, 1, 6, 6))


def test_the_images_are_the_samplers_modes_in_its_order_and_seed():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (60, 1, 5, 5), generator=g, dtype=torch.uint8)
    y = torch.arange(3).repeat_interleave(20)
    u8, _ = mode_control.mode_sets(x, y, 3, [3], seed=7)[3]
    modes = class_modes(x.float() / 127.5 - 1, y, [0, 1, 2], 3, 7)
    want = torch.cat([modes[c] for c in range(3)])
    assert np.abs(u8.astype(np.float64) / 127.5 - 1 - want.numpy()).max() <= 0.5 / 127.5 + 1e-6
    other, _ = mode_control.mode_sets(x, y, 3, [3], seed=8)[3]
    assert not np.array_equal(u8, other)


def test_the_written_file_reads_back_as_a_synthetic_set(tmp_path):
    x, y, _ = clustered()
    u8, labels = mode_control.mode_sets(x, y, 3, [2], seed=0)[2]
    f = tmp_path / "modes.npz"
    np.savez(f, images=u8, labels=labels, class_names=np.array(["a", "b", "c"]))
    s = load_synthetic(f)
    assert s.class_names == ["a", "b", "c"] and s.images.shape == (6, 1, 6, 6)
    assert s.labels.tolist() == labels.tolist() and np.array_equal(s.images.numpy(), u8)


def test_feature_modes_are_pixel_means_of_the_feature_clusters():
    x, y, protos = clustered(n_classes=1, k=2, copies=6)
    feats = torch.arange(12).float().unsqueeze(1) % 2                        # groups that mix both prototypes
    u8, _ = mode_control.mode_sets(x, y, 1, [2], seed=0, feats=feats)[2]
    mixed = (protos[0, 0].float() + protos[0, 1].float()) / 2                 # each group: 3 of each prototype
    for m in u8:
        assert np.abs(m.astype(np.float64) - mixed.numpy()).max() <= 1


def test_medoid_controls_are_training_images_of_their_class():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (60, 1, 5, 5), generator=g, dtype=torch.uint8)
    y = torch.arange(3).repeat_interleave(20)
    u8, labels = mode_control.mode_sets(x, y, 3, [4], seed=0, medoid=True)[4]
    for img, c in zip(u8, labels):       # exact bytes of one of its own class's images: no rounding, no average
        assert any(np.array_equal(img, r) for r in x[y == int(c)].numpy())
