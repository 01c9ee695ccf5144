"""The preset files: the folder the module names is the one it reads, and it holds the shipped presets."""
import re
from pathlib import Path

import minimaxdd
from minimaxdd.pipeline import presets


def test_the_preset_folder_named_in_the_docs_is_the_one_read_and_holds_presets():
    named = re.search(r"`(minimaxdd/[\w/]+)/`", presets.__doc__).group(1)
    assert (Path(minimaxdd.__file__).parent.parent / named).resolve() == presets.PRESETS_DIR
    assert "digits" in presets.list_presets() and presets.describe("digits")[0] == "distill"
