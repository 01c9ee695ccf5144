"""The published protocols' constants against the reference code, DD-Ranking's scores on hand-computed cases,
the torchvision-layout teacher, and a tiny `rded` training."""
import math
from types import SimpleNamespace

import pytest
import torch

from minimaxdd.data import augment
from minimaxdd.errors import UserError
from minimaxdd.evaluation import ddranking
from minimaxdd.evaluation.protocols import PROTOCOLS, for_classes, idc_epochs
from minimaxdd.evaluation.teachers import FULL_TEACHER, TorchvisionResNet18, load_torchvision_resnet18
from minimaxdd.evaluation.train_test import evaluate_set, half_cosine, soft_label_loss
from minimaxdd.pipeline.evaluation import ddranking_scores

# (protocol, field, reference value, source)
CONSTANTS = [
    ("rded", "optimizer", "adamw", "RDED validation/main.py"),
    ("rded", "lr", 1e-3, "RDED argument.py adamw_lr for conv3 / resnet18"),
    ("rded", "weight_decay", 0.01, "RDED argument.py adamw_weight_decay"),
    ("rded", "betas", (0.9, 0.999), "RDED validation/main.py"),
    ("rded", "decay_norm_and_bias", False, "RDED validation/utils.py get_parameters"),
    ("rded", "schedule", "half_cosine", "RDED validation/main.py LambdaLR"),
    ("rded", "epochs", 300, "RDED scripts --re-epochs 300"),
    ("rded", "temperature", 20.0, "RDED argument.py, cutmix"),
    ("rded", "kl_times_t2", False, "RDED validation/main.py KLDivLoss, no T^2"),
    ("rded", "cutmix_p", 1.0, "RDED mix_aug on every batch"),
    ("rded", "cutmix_beta", 1.0, "RDED argument.py --cutmix 1.0"),
    ("rded", "augment", "flip", "RDED CIFAR scripts --factor 1"),
    ("rded", "batch_by_ipc", ((1, 10), (10, 50), (50, 100)), "RDED argument.py re_batch_size"),
    ("rded-imagenet", "augment", "rded_patch2", "RDED ImageNet scripts --factor 2"),
    ("rded-noaug", "augment", "none", "DD-Ranking aug_robust.py, aug_func None"),
    ("rded-noaug", "cutmix_p", 0.0, "DD-Ranking aug_robust.py, aug_func None"),
    ("dc", "lr", 0.01, "DC / DSA / DM evaluation"), ("dc", "epochs", 1000, "DC / DSA / DM evaluation"),
    ("dc", "batch_size", 256, "DC / DSA / DM evaluation"), ("dc", "milestones", (0.5,), "DC / DSA / DM"),
    ("idc", "batch_size", 64, "IDC argument.py"), ("idc", "gamma", 0.2, "IDC train.py"),
    ("idc", "milestones", (2 / 3, 5 / 6), "IDC train.py"), ("idc", "cutmix_p", 1.0, "IDC / Minimax"),
]


@pytest.mark.parametrize("name,field,value,source", CONSTANTS)
def test_protocol_constants_match_the_reference(name, field, value, source):
    assert getattr(PROTOCOLS[name], field) == value, source


def test_full_teacher_is_ddranking_real_data_recipe():
    # DD-Ranking REAL_DATA_TRAINING_CONFIG["CIFAR10-ConvNet-3"]
    t = FULL_TEACHER
    assert (t.lr, t.momentum, t.weight_decay, t.batch_size, t.epochs, t.milestones, t.gamma) == \
        (0.01, 0.9, 5e-4, 512, 200, (0.5,), 0.1)


@pytest.mark.parametrize("ipc,classes,epochs", [
    (1, 10, 3000), (10, 10, 2000), (50, 10, 1500), (100, 10, 1000), (500, 10, 500), (600, 10, 300),
    (1, 100, 2000), (10, 100, 1300), (50, 100, 1000), (200, 100, 600), (500, 100, 300), (None, 100, 200),
    (10, 1000, 2000), (50, 1000, 1500)])
def test_idc_epochs_as_ipc_epoch(ipc, classes, epochs):
    assert idc_epochs(ipc, classes) == epochs


def test_idc_many_classes_settings():
    p = for_classes(PROTOCOLS["idc"], 1000)
    assert (p.lr, p.weight_decay, p.batch_size) == (0.1, 1e-4, 128)
    assert for_classes(PROTOCOLS["idc"], 10) == PROTOCOLS["idc"]
    assert for_classes(PROTOCOLS["dc"], 1000) == PROTOCOLS["dc"]


def test_hard_records_keep_their_keys():
    assert set(PROTOCOLS["dc"].to_dict()) == {"name", "lr", "momentum", "weight_decay", "batch_size", "augment",
                                              "cutmix_p", "cutmix_beta", "milestones", "gamma", "epochs"}
    assert set(PROTOCOLS["dc-soft"].to_dict()) == set(PROTOCOLS["dc"].to_dict()) | {"temperature"}
    assert "optimizer" in PROTOCOLS["rded"].to_dict()


@pytest.mark.parametrize("ipc,classes,n,batch", [(1, 10, 10, 10), (10, 10, 100, 50), (50, 10, 500, 100),
                                                 (10, 100, 1000, 100), (10, 10, 30, 30), (20, 10, 200, 100)])
def test_rded_batch_rule(ipc, classes, n, batch):
    assert PROTOCOLS["rded"].batch_for(ipc, classes, n) == batch


def test_half_cosine_goes_from_one_to_half():
    assert half_cosine(0, 300) == 1.0
    assert half_cosine(150, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert half_cosine(300, 300) == pytest.approx(0.5)


def test_kl_without_t2_is_plain_kl():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert soft_label_loss(s, t, 4.0, times_t2=True) == pytest.approx(16 * soft_label_loss(s, t, 4.0, False).item())
    same = soft_label_loss(t, t, 20.0, times_t2=False)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_swap_halves_draws_the_four_arrangements():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    y = augment.swap_halves(x, torch.Generator().manual_seed(0))
    lr, tb = x[0].roll(2, dims=2), x[0].roll(2, dims=1)
    allowed = [x[0], lr, tb, lr.roll(2, dims=1)]
    assert all(any(torch.equal(yi, a) for a in allowed) for yi in y)
    assert len({tuple(yi.flatten().tolist()) for yi in y}) == 4


# (full hard, syn hard, syn soft, random soft, syn noaug, random noaug) -> hand-computed scores
SCORES = [
    ((0.80, 0.60, 0.70, 0.65, 0.50, 0.40),
     {"hlr": 20.0, "ior": 5.0, "lrs": 100 * (math.exp(-0.075) - math.exp(-1)) / (math.e - math.exp(-1)),
      "ars": 100 * (math.exp(0.075) - math.exp(-1)) / (math.e - math.exp(-1))}),
    ((0.50, 0.50, 0.30, 0.30, 0.20, 0.20), {"hlr": 0.0, "ior": 0.0, "lrs": 100 * (1 - math.exp(-1)) / (math.e - math.exp(-1)),
                                            "ars": 100 * (1 - math.exp(-1)) / (math.e - math.exp(-1))}),
    ((1.0, 0.0, 0.0, 1.0, 0.0, 1.0), {"hlr": 100.0, "ior": -100.0, "lrs": 0.0, "ars": 0.0}),
    ((0.0, 1.0, 1.0, 0.0, 1.0, 0.0), {"hlr": -100.0, "ior": 100.0, "lrs": 100.0, "ars": 100.0}),
    ((None, 0.6, 0.7, 0.65, None, None), {"ior": 5.0}),
]


@pytest.mark.parametrize("acc,want", SCORES)
def test_ddranking_scores_by_hand(acc, want):
    got = ddranking.scores(*acc)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_distill_scores_from_rows():
    cfg = SimpleNamespace(evaluate=SimpleNamespace(soft_labels=True, soft_protocol="rded", protocol="dc"))
    row = lambda m, k, p, a: {"method": m, "ipc": k, "model": "convnet3", "protocol": p, "mean": a}  # noqa: E731
    rows = [row("full", None, "dc", 0.8), row("ours", 10, "dc", 0.6), row("random", 10, "dc", 0.5),
            row("ours", 10, "rded", 0.7), row("random", 10, "rded", 0.65),
            row("ours", 10, "rded-noaug", 0.5), row("random", 10, "rded-noaug", 0.4)]
    (s,) = ddranking_scores(cfg, rows)
    assert (s["method"], s["ipc"]) == ("ours", 10)
    assert s == {**s, **{k: pytest.approx(v) for k, v in ddranking.scores(0.8, 0.6, 0.7, 0.65, 0.5, 0.4).items()}}


# torchvision.models.resnet18().state_dict(): 122 entries, these among them
TORCHVISION_KEYS = ["conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked", "layer1.0.conv1.weight",
                    "layer1.1.bn2.bias", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
                    "layer4.1.conv2.weight", "fc.weight", "fc.bias"]


def test_torchvision_layout_resnet18_loads_and_keeps_subset_rows(tmp_path):
    torch.manual_seed(0)
    net = TorchvisionResNet18(1000)
    sd = net.state_dict()
    assert len(sd) == 122 and all(k in sd for k in TORCHVISION_KEYS)
    assert "layer1.0.downsample.0.weight" not in sd
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    sub = load_torchvision_resnet18(path, [7, 3])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = net.eval()(x)
        assert torch.allclose(sub(x), full[:, [7, 3]], atol=1e-5)
    del sd["fc.bias"]
    torch.save(sd, path)
    with pytest.raises(UserError, match="fc.bias"):
        load_torchvision_resnet18(path, [7, 3])


def test_rded_trains_with_a_teacher():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(2).repeat(10)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).requires_grad_(False)
    for name in ("rded", "rded-imagenet", "rded-noaug"):
        r = evaluate_set(x, y, x, y, 2, protocol=PROTOCOLS[name], repeats=1, epochs=1, teacher=teacher,
                         teacher_test_accuracy=0.5)
        assert r.teacher_test_accuracy == 0.5 and 0.0 <= r.mean <= 1.0
        assert r.protocol_config["optimizer"] == "adamw"
