"""`minimaxdd metrics`: how a synthetic set sits against the real training set, in a feature space.

Per class and overall (all classes pooled), between synthetic features Y (M of them) and real
features X (N of them):

- `mmd`: squared maximum mean discrepancy with a Gaussian kernel (biased V-statistic, so it is
  >= 0 and 0 for identical sets); the bandwidth is the median pairwise distance of the real
  features, fixed per class, so every synthetic set is measured with the same kernel. The
  Minimax paper's Table 2 compares sets by MMD of classifier features.
- `fid`: the Frechet distance between Gaussian fits (Heusel et al. 2017), of *these* features,
  not Inception's unless the user gives Inception as a TorchScript file.
- `precision`, `recall`: k-NN manifold estimates (Kynkaanniemi et al. 2019, k = 3): the share of
  synthetic samples inside some real sample's k-NN ball, and of real samples inside some
  synthetic sample's ball.
- `density`, `coverage`: Naeem et al. 2020 (k = 5), from the real samples' k-NN balls only.
- `coverage_no_self`: coverage in which no real sample counts as covered by an exact copy of itself in the
  set (ours). A subset of the real training images lies on the real samples themselves, each inside its own
  ball: 500 images of a 5085-image pool cover at least 0.098 by being there, a credit no generated image gets.
  Given only where the set's images are known (`minimaxdd metrics`, `copies_of`), else absent.
- `representativeness`: mean cosine similarity of each real sample to its nearest synthetic
  sample of the same class (higher: every real sample has a synthetic one near it).
- `spread`: 1 - mean pairwise cosine similarity among a class's synthetic samples (higher:
  more spread out; 0 for a set of one repeated image). Results written before issue 28 call it
  `diversity`, which `metric` still reads; it is not the fine-tuning's diversity term
  (`training.minimax.diversity_loss`, L_d: a max cosine, where higher means less diverse).
  Both cosines are taken on features centred on the real class mean.

Higher is better for all but `mmd` and `fid`. Features default to the cached reference classifier
(trained on the full real training set): its last feature map average-pooled to at most 4x4
(`classifiers.EMBED_SIDE`), so a 256 px image gives 2048 values, not ConvNet-3's 131,072; the
`features` key names the extractor in every output. Memory is bounded by design: distances in row
blocks, the Frechet distance in the smaller of feature and sample space.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from minimaxdd.data.dataset import Dataset, channel_stats
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import conform, load_synthetic
from minimaxdd.errors import UserError
from minimaxdd.evaluation.classifiers import EMBED_SIDE
from minimaxdd.evaluation.reference_classifier import ReferenceConfig, embed, reference_classifier
from minimaxdd.files import input_paths, refuse_overlap, write_json
from minimaxdd.runtime import pick_device

PR_K = 3        # Kynkaanniemi et al. 2019 (their default k)
DC_K = 5        # Naeem et al. 2020 (their recommended k)
MAX_REAL_PER_CLASS = 2000   # ours: real features per class used for the k-NN and kernel estimates (bounds cost)
KEYS = ("mmd", "fid", "precision", "recall", "density", "coverage", "coverage_no_self", "representativeness",
        "spread")
LOWER_IS_BETTER = ("mmd", "fid")
OLD_NAMES = {"spread": "diversity"}     # the name a key had in results files written before issue 28


CHUNK = 2048                # ours: rows per block of a distance matrix: memory stays O(CHUNK x N), not O(N^2)
BANDWIDTH_ROWS = 2000       # ours: rows of real features whose distances set the MMD bandwidth (median heuristic)


def _pdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())


def _row_blocks(a: torch.Tensor, b: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, distances of rows a[start:start + CHUNK] to all of b), block by block."""
    for i in range(0, len(a), CHUNK):
        yield i, _pdist(a[i:i + CHUNK], b)


def _knn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (k clipped to len(x) - 1)."""
    k = min(k, len(x) - 1)
    if k < 1:
        return torch.zeros(len(x), dtype=torch.float64)
    return torch.cat([d.kthvalue(k + 1, dim=1).values for _, d in _row_blocks(x, x)])  # the row itself is at 0


def _kernel_mean(a: torch.Tensor, b: torch.Tensor, g: float) -> float:
    return float(sum(torch.exp(g * d ** 2).sum() for _, d in _row_blocks(a, b))) / (len(a) * len(b))


class Real:
    """Real features x (N, D) with what every comparison against them shares: the k-NN radii, the MMD bandwidth
    and the real-real kernel mean, each computed on first use and kept. These are the real-real distance passes,
    O(N^2 D) and the bulk of the cost at N = 20000; a run that compares several sets with one Real pays them once.
    Every metric takes a Real or a plain tensor (a tensor is a Real used once)."""

    def __init__(self, x: torch.Tensor, index: torch.Tensor | None = None):
        self.x = x
        self.index = torch.arange(len(x)) if index is None else index   # (N,) each row's real training image
        self._radius: dict[int, torch.Tensor] = {}
        self._bandwidth: float | None = None
        self._kxx: dict[float, float] = {}

    def radius(self, k: int) -> torch.Tensor:
        """(N,) each row's distance to its k-th nearest other row (`_knn_radius`)."""
        if k not in self._radius:
            self._radius[k] = _knn_radius(self.x, k)
        return self._radius[k]

    def bandwidth(self) -> float:
        """The median heuristic: the median distance over all pairs of up to BANDWIDTH_ROWS real rows (every
        class alone); beyond that (all classes pooled) over an evenly strided subset of that size (memory)."""
        if self._bandwidth is None:
            sub = self.x[::math.ceil(len(self.x) / BANDWIDTH_ROWS)]    # (<= BANDWIDTH_ROWS, D)
            d = _pdist(sub, sub)                                       # (S, S)
            self._bandwidth = float(d[d > 0].median()) if (d > 0).any() else 1.0
        return self._bandwidth

    def kernel_mean(self, bandwidth: float) -> float:
        """The mean of exp(-d^2 / (2 s^2)) over all pairs of real rows, s = bandwidth."""
        if bandwidth not in self._kxx:
            self._kxx[bandwidth] = _kernel_mean(self.x, self.x, -1.0 / (2 * bandwidth ** 2))
        return self._kxx[bandwidth]


def as_real(x: torch.Tensor | Real) -> Real:
    return x if isinstance(x, Real) else Real(x)


def mmd2(x: torch.Tensor | Real, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Biased squared MMD with a Gaussian kernel exp(-d^2 / (2 s^2)); s = median real distance (`Real.bandwidth`)."""
    r = as_real(x)
    s = r.bandwidth() if bandwidth is None else bandwidth
    g = -1.0 / (2 * s ** 2)
    return max(0.0, r.kernel_mean(s) + _kernel_mean(y, y, g) - 2 * _kernel_mean(r.x, y, g))


def _centred(a: torch.Tensor) -> torch.Tensor:
    """Rows of a (n, D) minus their mean, over sqrt(n - 1): A with A^T A the sample covariance (0 for n = 1)."""
    return (a - a.mean(0)) / math.sqrt(max(len(a) - 1, 1))


def _trace_sqrt_product(a: torch.Tensor, b: torch.Tensor) -> float:
    """Tr((Sx^1/2 Sy Sx^1/2)^1/2) for Sx = A^T A, Sy = B^T B, A (n, D), B (m, D), in the smallest of the three
    spaces, so memory is O(k^2) with k = min(D, n, m) (plus blocks of CHUNK rows), never O(D^2) for large D.

    D <= min(n, m): from the D x D covariances. Otherwise the non-zero eigenvalues of Sx Sy are the squared
    singular values of C = A B^T (n, m), i.e. the eigenvalues of C^T C (m x m) or C C^T (n x n), accumulated
    over blocks of rows."""
    n, d = a.shape
    m = len(b)
    if d <= min(n, m):
        sx, sy = a.T @ a, b.T @ b                                      # (D, D) each
        ex, vx = torch.linalg.eigh(sx)
        rx = (vx * ex.clamp(min=0).sqrt()) @ vx.T                      # Sx^1/2
        return float(torch.linalg.eigvalsh(rx @ sy @ rx).clamp(min=0).sqrt().sum())
    if m > n:                                                          # the Gram of the smaller side
        a, b = b, a
    gram = torch.zeros(len(b), len(b), dtype=a.dtype)                  # (k, k)
    for i in range(0, len(a), CHUNK):
        c = a[i:i + CHUNK] @ b.T                                       # (rows, k) a block of C
        gram += c.T @ c
    return float(torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().sum())


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """||mu_x - mu_y||^2 + Tr(Sx + Sy - 2 (Sx^1/2 Sy Sx^1/2)^1/2); sample covariances (zero for one sample).

    Memory is bounded by the smaller of the feature dimension and the sample counts (`_trace_sqrt_product`):
    131,072-dim features of a few hundred images need no 128 GiB covariance."""
    x, y = x.double(), y.double()
    a, b = _centred(x), _centred(y)                                    # (n, D), (m, D)
    mean_term = float(((x.mean(0) - y.mean(0)) ** 2).sum())
    traces = float((a ** 2).sum() + (b ** 2).sum())                    # Tr Sx + Tr Sy
    return max(0.0, mean_term + traces - 2 * _trace_sqrt_product(a, b))


def precision_recall(x: torch.Tensor | Real, y: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """k-NN precision (synthetic inside the real manifold) and recall (real inside the synthetic one)
    of real features x (N, D) and synthetic features y (M, D)."""
    r = as_real(x)
    x, rx, ry = r.x, r.radius(k), _knn_radius(y, k)
    inside_real = torch.zeros(len(y), dtype=torch.bool)    # synthetic inside some real ball
    recalled = torch.zeros(len(x), dtype=torch.bool)       # real inside some synthetic ball
    for i, d in _row_blocks(x, y):                         # blocks of the (N real, M synthetic) distances
        inside_real |= (d <= rx[i:i + len(d), None]).any(0)
        recalled[i:i + len(d)] = (d <= ry[None, :]).any(1)
    return float(inside_real.double().mean()), float(recalled.double().mean())


def density_coverage(x: torch.Tensor | Real, y: torch.Tensor, k: int = DC_K) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of synthetic y (M, D) against the real k-NN balls of x (N, D)."""
    r = as_real(x)
    x, rx = r.x, r.radius(k)
    count, covered = 0.0, 0
    for i, d in _row_blocks(x, y):
        inside = d <= rx[i:i + len(d), None]               # (rows of real, M synthetic)
        count += float(inside.double().sum())
        covered += int(inside.any(1).sum())
    kk = min(k, len(x) - 1) or 1
    return count / (kk * len(y)), covered / len(x)


def coverage_no_self(x: torch.Tensor | Real, y: torch.Tensor, copy_of: torch.Tensor, k: int = DC_K) -> float:
    """Coverage of real x (N, D) by synthetic y (M, D) as `density_coverage`, except that synthetic row j does not
    cover the real row it is an exact copy of: copy_of (M,) gives that real training image's index (as
    `Real.index` counts them), -1 for a row that copies none."""
    r = as_real(x)
    x, rx = r.x, r.radius(k)
    covered = 0
    for i, d in _row_blocks(x, y):
        inside = d <= rx[i:i + len(d), None]                                    # (rows of real, M synthetic)
        inside &= r.index[i:i + len(d), None] != copy_of[None, :]               # not by its own copy
        covered += int(inside.any(1).sum())
    return covered / len(x)


def byte_table(real: torch.Tensor) -> dict[int, list[int]]:
    """{hash of an image's bytes: the indices of real (N, C, H, W) with that hash}, for `copies_of`."""
    table: dict[int, list[int]] = {}
    for i, row in enumerate(real.reshape(len(real), -1).contiguous().numpy()):
        table.setdefault(hash(row.tobytes()), []).append(i)
    return table


def copies_of(images: torch.Tensor, real: torch.Tensor, table: dict[int, list[int]] | None = None) -> torch.Tensor:
    """(M,) for each image of images (M, C, H, W) the index of an identical image in real (N, C, H, W), -1 where
    there is none (different shapes or dtypes: none). Exact bytes, found through `byte_table(real)` (pass it as
    `table` when several sets are checked against one real set)."""
    out = torch.full((len(images),), -1, dtype=torch.long)
    if images.shape[1:] != real.shape[1:] or images.dtype != real.dtype:
        return out
    flat = real.reshape(len(real), -1).contiguous().numpy()
    table = byte_table(real) if table is None else table
    for j, row in enumerate(images.reshape(len(images), -1).contiguous().numpy()):
        for i in table.get(hash(row.tobytes()), ()):
            if np.array_equal(flat[i], row):            # a hash collision is not a copy
                out[j] = i
                break
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a.double(), dim=1, eps=1e-12)
    b = torch.nn.functional.normalize(b.double(), dim=1, eps=1e-12)
    return a @ b.T


def representativeness(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over real rows x (N, D) of the cosine similarity to the nearest synthetic row of y (M, D)."""
    return float(_cos(x, y).max(1).values.mean())


def spread(y: torch.Tensor) -> float:
    """1 - mean cosine similarity between distinct rows of y (M, D); 0 for fewer than two rows."""
    if len(y) < 2:
        return 0.0
    s = _cos(y, y)   # (M, M)
    m = len(y)
    return float(1 - (s.sum() - s.diagonal().sum()) / (m * (m - 1)))


def compare(x: torch.Tensor | Real, y: torch.Tensor, copy_of: torch.Tensor | None = None) -> dict:
    """Every metric between real features x and synthetic features y (one class, or pooled); `copy_of` (M,), the
    real training image each synthetic row copies (-1: none), adds `coverage_no_self`.

    The cosine-based terms use features centred on the real mean: post-ReLU features share a large
    positive component, which makes raw cosines all close to 1 and hides the differences."""
    real = as_real(x)
    p, r = precision_recall(real, y)
    d, c = density_coverage(real, y)
    x = real.x
    mu = x.mean(0, keepdim=True)
    out = {"mmd": mmd2(real, y), "fid": frechet_distance(x, y), "precision": p, "recall": r, "density": d,
           "coverage": c}
    if copy_of is not None:
        out["coverage_no_self"] = coverage_no_self(real, y, copy_of)
    return {**out, "representativeness": representativeness(x - mu, y - mu), "spread": spread(y - mu)}


def real_sides(real_f: torch.Tensor, real_y: torch.Tensor, num_classes: int, seed: int = 0,
               max_real: int = MAX_REAL_PER_CLASS) -> tuple[list[Real], Real]:
    """The real side of `set_metrics`: each class's real features subsampled to `max_real` (seeded), and all of
    those pooled, as `Real`s, to share between the sets compared with the same real data."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(num_classes):
        xi = (real_y == c).nonzero().squeeze(1)
        keep.append(xi[torch.randperm(len(xi), generator=g)[:max_real]])
    return [Real(real_f[xi], xi) for xi in keep], Real(real_f[torch.cat(keep)], torch.cat(keep))


def set_metrics(real_f: torch.Tensor, real_y: torch.Tensor, syn_f: torch.Tensor, syn_y: torch.Tensor,
                num_classes: int, seed: int = 0, max_real: int = MAX_REAL_PER_CLASS,
                sides: tuple[list[Real], Real] | None = None, copy_of: torch.Tensor | None = None) -> dict:
    """Per-class and overall metrics. Real features are subsampled to `max_real` per class (seeded); `sides`,
    `real_sides` of the same arguments, when several sets are measured against them (the same numbers, the
    real-real distances computed once). `copy_of` (M,): the row of real_f each synthetic row is an exact copy of
    (-1: none; `copies_of`), for `coverage_no_self`.

    Overall: mmd, fid, precision, recall, density and coverage on all features pooled (class-blind);
    representativeness and spread are per-class quantities, averaged over classes.
    """
    per_real, pooled = sides or real_sides(real_f, real_y, num_classes, seed, max_real)
    per_class = []
    for c, xs in enumerate(per_real):
        yi = (syn_y == c).nonzero().squeeze(1)
        per_class.append(None if len(xs.x) < 2 or len(yi) < 1
                         else compare(xs, syn_f[yi], None if copy_of is None else copy_of[yi]))
    overall = compare(pooled, syn_f, copy_of)
    valid = [m for m in per_class if m is not None]
    for k in ("representativeness", "spread"):
        overall[k] = float(np.mean([m[k] for m in valid])) if valid else float("nan")
    return {**overall, "per_class": per_class}


# ---------------------------------------------------------------------------------------------
# features


def feature_spec(spec: str) -> Path | None:
    """Check a `--features` value before any work: None for the reference classifier, else the TorchScript file."""
    if spec == "reference":
        return None
    if spec.startswith("torchscript:"):
        path = Path(spec.split(":", 1)[1])
        if not path.is_file():
            raise UserError(f"feature extractor {path} not found; export one with torch.jit.save (e.g. an "
                            "Inception-v3 pool3 model taking float images in [0, 1] at its own size)")
        return path
    raise UserError(f"--features must be 'reference' or 'torchscript:PATH', got {spec!r}")


class Features:
    """A feature extractor for uint8 images: the reference classifier, or a TorchScript file."""

    def __init__(self, ds: Dataset, spec: str = "reference", device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.stats = channel_stats(ds.x_train)
        path = feature_spec(spec)
        if path is None:
            cfg = ReferenceConfig()
            self.net = reference_classifier(ds, cfg, self.device)
            self.name = (f"{cfg.model} reference classifier trained on all of {ds.name} "
                         f"({cfg.epochs_for(len(ds.x_train))} epochs, dc protocol), last feature map average-pooled "
                         f"to at most {EMBED_SIDE}x{EMBED_SIDE}; not Inception")
            self.script = False
        else:
            self.net = torch.jit.load(str(path), map_location=self.device).eval()
            self.name = f"TorchScript {path.name} (images in [0, 1])"
            self.script = True

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Features (N, D) float32 on the CPU of uint8 images x (N, C, H, W)."""
        if not self.script:
            return embed(self.net, x, self.stats, batch_size)
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(self.device).float() / 255   # (B, C, H, W) in [0, 1]
            out.append(self.net(xb).float().flatten(1).cpu())
        return torch.cat(out)


def tsne_plot(real_f: torch.Tensor, real_y: torch.Tensor, sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
              class_names: list[str], path: str | Path, per_class: int = 100, seed: int = 0) -> Path:
    """t-SNE of real features (a seeded subsample per class) with each set's features on top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(class_names)):
        members = (real_y == c).nonzero().squeeze(1)                      # (n_c,)
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    idx = torch.cat(picks)                                                # (n_real,)
    parts = [real_f[idx]] + [f for f, _ in sets.values()]
    # perplexity: scikit-learn's default 30, lowered (ours) for small plots where it must stay below the
    # number of points
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(5, len(idx) // 20)))
    emb = tsne.fit_transform(torch.cat(parts).numpy())                    # (n_real + sum of set sizes, 2)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 4.4), squeeze=False)
    n_real = len(idx)
    off = n_real
    for ax, (name, (f, y)) in zip(axes[0], sets.items()):
        ax.scatter(emb[:n_real, 0], emb[:n_real, 1], c=[cmap(int(c) % cmap.N) for c in real_y[idx]], s=4,
                   alpha=0.25)
        e = emb[off:off + len(f)]
        ax.scatter(e[:, 0], e[:, 1], c=[cmap(int(c) % cmap.N) for c in y], s=40, marker="*", edgecolors="k",
                   linewidths=0.5)
        ax.set_title(f"{name} (stars) on real (dots)")
        ax.set_xticks([])
        ax.set_yticks([])
        off += len(f)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_metrics(d: dict) -> str:
    """A Markdown table of overall metrics, one row per set."""
    sets = d["sets"]
    head = "| set | accuracy (%) | " + " | ".join(f"{k} ({'lower' if k in LOWER_IS_BETTER else 'higher'} better)"
                                                 for k in KEYS) + " |"
    out = [f"Features: {d['features']}.", "", head, "| --- | ---: | " + " | ".join("---:" for _ in KEYS) + " |"]
    for name, m in sets.items():
        acc = m.get("accuracy")
        acc = "" if acc is None else f"{100 * acc['mean']:.2f} +- {100 * acc['std']:.2f}"
        out.append(f"| {name} | {acc} | " + " | ".join(_fmt(metric(m, k)) for k in KEYS) + " |")
    return "\n".join(out)


def metric(entry: dict, key: str) -> float | None:
    """entry[key], read under its old name from a results file written before the rename (OLD_NAMES)."""
    return entry[key] if key in entry else entry.get(OLD_NAMES.get(key, key))


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


PLOT_SUFFIXES = (".png", ".pdf", ".svg")   # formats the t-SNE figure is written in (matplotlib's, by suffix)


def set_names(synth: list[str]) -> list[str]:
    """Each set's name in the tables: the fewest trailing path components that tell the sets apart (`ipc10` alone,
    `plain/sample/ipc10` beside `modes/sample/ipc10`). UserError if one folder is given twice."""
    parts = [Path(os.path.abspath(p)).parts for p in synth]
    twice = sorted({p for p, q in zip(synth, parts) if parts.count(q) > 1})
    if twice:
        raise UserError(f"the set {', '.join(twice)} is given twice; give each set once")
    for k in range(1, max(len(q) for q in parts) + 1):
        names = ["/".join(q[-k:]) for q in parts]
        if len(set(names)) == len(names):
            return names
    raise AssertionError("distinct absolute paths always differ in some trailing component")


def _check_inputs(synth: list[str], features: str, out: str | None, tsne: str | None) -> None:
    """Every check that needs no data, before anything is loaded or trained (UserError names the fix)."""
    if not synth:
        raise UserError("metrics needs at least one synthetic set")
    set_names(synth)
    missing = [p for p in synth if not Path(p).exists()]
    if missing:
        raise UserError(f"synthetic set(s) {', '.join(missing)} do not exist")
    feature_spec(features)
    for what, path in (("--out", out), ("--tsne", tsne)):
        if path is not None and Path(path).is_dir():
            raise UserError(f"{what} {path} is a directory; give a file name")
        if path is not None:
            refuse_overlap(path, input_paths(*synth), what)
    if tsne is not None and Path(tsne).suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--tsne {tsne}: the figure is written as {', '.join(PLOT_SUFFIXES)}; use one of these")


def run_metrics(synth: list[str], real: str, out: str | None = None, features: str = "reference",
                size: int | None = None, device: str = "auto", seed: int = 0, tsne: str | None = None) -> dict:
    """Metrics of one or more synthetic sets against `real`'s training set (one feature pass over it).

    Every input (paths, feature spec, the real dataset, each set's classes and shape) is checked before
    the feature extractor is built, which for the reference classifier means training it."""
    _check_inputs(synth, features, out, tsne)
    dev = pick_device(device)
    ds = load_dataset(real, size=size)
    # a class a set lacks is reported per class (None), with conform's warning
    sets = {name: (p, conform(load_synthetic(p), ds.class_names, ds.channels, ds.size, allow_missing=True))
            for name, p in zip(set_names(synth), synth)}
    empty = [name for name, (_, s) in sets.items() if len(s.labels) == 0]
    if empty:
        raise UserError(f"set(s) {', '.join(empty)} hold no images")
    fx = Features(ds, features, dev)
    real_f = fx(ds.x_train)
    result = {"features": fx.name, "real": real, "seed": seed, "k_precision_recall": PR_K,
              "k_density_coverage": DC_K, "max_real_per_class": MAX_REAL_PER_CLASS,
              "class_names": list(ds.class_names), "sets": {}}
    feats = {}
    sides = real_sides(real_f, ds.y_train, ds.num_classes, seed)         # the real-real distances: once for all sets
    table = byte_table(ds.x_train)                                       # the real images' bytes: once for all sets
    for name, (path, s) in sets.items():
        f = fx(s.images)
        feats[name] = (f, s.labels)
        result["sets"][name] = {"path": str(path), "num_images": len(s.labels),
                                **set_metrics(real_f, ds.y_train, f, s.labels, ds.num_classes, seed, sides=sides,
                                              copy_of=copies_of(s.images, ds.x_train, table))}
    if len(synth) == 1:   # the single-set form: metrics at the top level, as `m.json` users expect
        result.update({k: v for k, v in next(iter(result["sets"].values())).items()})
    if tsne:
        Path(tsne).parent.mkdir(parents=True, exist_ok=True)
        result["tsne"] = str(tsne_plot(real_f, ds.y_train, feats, list(ds.class_names), tsne, seed=seed))
    if out:
        write_json(out, result)
    return result
