"""The ImageNet subsets of the benchmark (10 classes, and ImageNet-100), as WordNet ids in label order.

Source: IDC (Kim et al., "Dataset Condensation via Efficient Synthetic-Data
Parameterization", ICML 2022), github.com/snu-mllab/Efficient-Dataset-Condensation,
whose ImageNet-subset class lists are reused by Minimax diffusion (Gu et al., CVPR 2024),
github.com/vimar-gu/MinimaxDiffusion. The order of each list is its label order.
"""
from __future__ import annotations

import re
from pathlib import Path

from minimaxdd.errors import UserError

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

# ImageNet-100 (Tian et al., CMC, ECCV 2020: github.com/HobbitLong/CMC, imagenet100.txt), the list IDC
# reads as class100.txt and Minimax diffusion fine-tunes in 5 phases of 20 classes (its --nclass 20
# --phase P takes entries 20P..20P+19). IMAGEIDC is its first 10 entries.
IMAGENET100: list[str] = [
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406",
    "n02091831", "n04517823", "n04589890", "n03062245", "n01773797",
    "n01735189", "n07831146", "n07753275", "n03085013", "n04485082",
    "n02105505", "n01983481", "n02788148", "n03530642", "n04435653",
    "n02086910", "n02859443", "n13040303", "n03594734", "n02085620",
    "n02099849", "n01558993", "n04493381", "n02109047", "n04111531",
    "n02877765", "n04429376", "n02009229", "n01978455", "n02106550",
    "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838",
    "n04099969", "n04592741", "n03891251", "n02701002", "n03379051",
    "n02259212", "n07715103", "n03947888", "n04026417", "n02326432",
    "n03637318", "n01980166", "n02113799", "n02086240", "n03903868",
    "n02483362", "n04127249", "n02089973", "n03017168", "n02093428",
    "n02804414", "n02396427", "n04418357", "n02172182", "n01729322",
    "n02113978", "n03787032", "n02089867", "n02119022", "n03777754",
    "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542",
    "n02018207", "n04067472", "n03930630", "n03584829", "n02123045",
    "n04229816", "n02100583", "n03642806", "n04336792", "n03259280",
    "n02116738", "n02108089", "n03424325", "n01855672", "n02090622",
]

WNID = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000  # ImageNet-1k, the ILSVRC 2012 classification label set (Russakovsky et al., IJCV 2015)

SUBSETS: dict[str, list[str]] = {"imagewoof": IMAGEWOOF, "imagenette": IMAGENETTE, "imageidc": IMAGEIDC,
                                  "imagenet100": IMAGENET100}

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


def imagenet_indices(wnids: list[str], synsets_file: str | None = None, folder: str | Path | None = None) -> list[int]:
    """ImageNet-1k indices of WordNet ids: from `synsets_file` (LOC_synset_mapping.txt, one
    'nXXXXXXXX name' per line in index order) when given; else from `folder` when it holds the
    1000 class folders of ImageNet's train split (the index is the position in their sorted list);
    else from IMAGENET_INDEX."""
    table = dict(IMAGENET_INDEX)
    if synsets_file is not None:
        lines = [ln.split()[0] for ln in open(synsets_file) if ln.strip()]
        if len(lines) != IMAGENET_CLASSES:
            raise UserError(f"{synsets_file} lists {len(lines)} synsets, expected the {IMAGENET_CLASSES} "
                            "of ImageNet-1k")
        table = {w: i for i, w in enumerate(lines)}
    elif folder is not None and Path(folder).is_dir():
        ids = sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and WNID.fullmatch(p.name))
        if len(ids) == IMAGENET_CLASSES:
            table = {w: i for i, w in enumerate(ids)}
    missing = [w for w in wnids if w not in table]
    if missing:
        raise UserError(f"no ImageNet index known for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                        "pass --synsets LOC_synset_mapping.txt (from the ImageNet download), point the dataset at "
                        "an ImageNet folder whose train/ has all 1000 class folders, or pass --class-map with one "
                        "index per class")
    return [table[w] for w in wnids]


def train_folder(spec: str | None) -> Path | None:
    """DIR/train of an ImageNet-subset dataset spec (`imagewoof:DIR`, ...), else None."""
    name, _, arg = (spec or "").partition(":")
    return Path(arg) / "train" if name in SUBSETS and arg else None
