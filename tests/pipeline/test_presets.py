"""The preset files: the folder the module names is the one it reads, and it holds the shipped presets."""
import re
from pathlib import Path

import minimaxdd
from minimaxdd.pipeline import presets


def test_the_preset_folder_named_in_the_docs_is_the_one_read_and_holds_presets():
    named = re.search(r"`(minimaxdd/[\w/]+)/`", presets.__doc__).group(1)
    assert (Path(minimaxdd.__file__).parent.parent / named).resolve() == presets.PRESETS_DIR
    assert "digits" in presets.list_presets() and presets.describe("digits")[0] == "distill"


def test_a_preset_that_trains_without_mirrors_fine_tunes_without_them():
    # a dataset the base must not see mirrored (digits, glyphs) must not be mirrored by fine-tuning either
    from minimaxdd.pipeline.config import build_config, load_distill_preset
    checked = 0
    for name in presets.list_presets():
        if presets.describe(name)[0] != "distill":
            continue
        given = load_distill_preset(name)
        cfg = build_config(given, {"data": given.get("data") or "digits"})   # small-data leaves the data open
        base_flip = cfg.base.train.flip if cfg.base is not None else None
        if base_flip is False:
            assert cfg.finetune.flip is False, name
            checked += 1
    assert checked >= 1                                                         # digits at least
