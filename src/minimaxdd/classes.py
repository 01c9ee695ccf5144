"""The 10-class ImageNet subsets of the benchmark, as WordNet ids in label order.

Source: IDC (Kim et al., "Dataset Condensation via Efficient Synthetic-Data
Parameterization", ICML 2022), github.com/snu-mllab/Efficient-Dataset-Condensation,
whose ImageNet-subset class lists are reused by Minimax diffusion (Gu et al., CVPR 2024),
github.com/vimar-gu/MinimaxDiffusion. The order of each list is its label order.
"""
from __future__ import annotations

# The 10 dog breeds of fast.ai's ImageWoof, taken from ImageNet-1k train/val.
IMAGEWOOF: list[str] = [
    "n02096294", "n02093754", "n02111889", "n02088364", "n02086240",
    "n02089973", "n02087394", "n02115641", "n02099601", "n02105641",
]

# The 10 easy classes of fast.ai's ImageNette.
IMAGENETTE: list[str] = [
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
]

# IDC's "ImageNet-10": the first 10 classes of the ImageNet-100 list of
# github.com/HobbitLong/CMC (imagenet100.txt).
IMAGEIDC: list[str] = [
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406",
    "n02091831", "n04517823", "n04589890", "n03062245", "n01773797",
]

SUBSETS: dict[str, list[str]] = {"imagewoof": IMAGEWOOF, "imagenette": IMAGENETTE, "imageidc": IMAGEIDC}

# Human-readable names (first lemma of the ImageNet-1k synset), for plots and reports.
WNID_NAMES: dict[str, str] = {
    # ImageWoof
    "n02096294": "Australian terrier",
    "n02093754": "Border terrier",
    "n02111889": "Samoyed",
    "n02088364": "beagle",
    "n02086240": "Shih-Tzu",
    "n02089973": "English foxhound",
    "n02087394": "Rhodesian ridgeback",
    "n02115641": "dingo",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    # ImageNette
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
    # ImageIDC
    "n02869837": "bonnet",
    "n01749939": "green mamba",
    "n02488291": "langur",
    "n02107142": "Doberman",
    "n13037406": "gyromitra",
    "n02091831": "Saluki",
    "n04517823": "vacuum",
    "n04589890": "window screen",
    "n03062245": "cocktail shaker",
    "n01773797": "garden spider",
}


def readable(wnid: str) -> str:
    """The human-readable name of a WordNet id, or the id itself when unknown."""
    return WNID_NAMES.get(wnid, wnid)


# ImageNet-1k class indices (position of the WordNet id in the sorted list of the 1000 ids, the
# label order of every ImageNet-pretrained model, DiT included) of the subsets' classes, in
# their label order. Saluki 176 and Australian terrier 193 checked against a public
# wnid -> index table; the rest are the standard indices of these subsets.
IMAGENET_INDEX: dict[str, int] = {
    # ImageWoof
    "n02096294": 193, "n02093754": 182, "n02111889": 258, "n02088364": 162, "n02086240": 155,
    "n02089973": 167, "n02087394": 159, "n02115641": 273, "n02099601": 207, "n02105641": 229,
    # ImageNette
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701,
}


def imagenet_indices(wnids: list[str], synsets_file: str | None = None) -> list[int]:
    """ImageNet-1k indices of WordNet ids: from `synsets_file` (LOC_synset_mapping.txt, one
    'nXXXXXXXX name' per line in index order) when given, else from IMAGENET_INDEX."""
    from minimaxdd.errors import UserError

    table = dict(IMAGENET_INDEX)
    if synsets_file is not None:
        lines = [ln.split()[0] for ln in open(synsets_file) if ln.strip()]
        if len(lines) != 1000:
            raise UserError(f"{synsets_file} lists {len(lines)} synsets, expected the 1000 of ImageNet-1k")
        table = {w: i for i, w in enumerate(lines)}
    missing = [w for w in wnids if w not in table]
    if missing:
        raise UserError(f"no ImageNet index known for {', '.join(missing)}; pass --synsets LOC_synset_mapping.txt "
                        "(from the ImageNet download) or --class-map with one index per class")
    return [table[w] for w in wnids]
