"""`diffgen generate`: numbering, remaking one image, grids, streaming to disk, memory and messages."""

from __future__ import annotations

import pytest

from diffgen import generate
from diffgen.generate import class_index

CLASSES = ("cats", "dogs", "smileys-emotion")


# --- messages ---------------------------------------------------------------------------------------------------

def test_class_names_match_without_case_and_near_misses_get_a_suggestion():
    assert class_index(CLASSES, "Smileys-Emotion") == 2 and class_index(CLASSES, "1") == 1
    with pytest.raises(generate.OptionError, match="did you mean smileys-emotion"):
        class_index(CLASSES, "smileys")
    with pytest.raises(generate.OptionError, match="did you mean dogs"):
        class_index(CLASSES, "dgos")
    with pytest.raises(generate.OptionError, match="unconditional"):
        class_index((), "cats")
