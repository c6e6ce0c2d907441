"""`diffgen generate`: numbering, remaking one image, grids, streaming to disk, memory and messages."""

from __future__ import annotations

import pytest
from PIL import Image

from diffgen import generate
from diffgen.generate import Generated, class_index, grid_layout

CLASSES = ("cats", "dogs", "smileys-emotion")


# --- grids ---------------------------------------------------------------------------------------------------

def made(labels):
    return [Generated(Image.new("L", (1, 1), i), i, i, label) for i, label in enumerate(labels)]


@pytest.mark.parametrize(("n", "ncols"), [(10, 4), (12, 4), (16, 4), (2, 2), (1, 1), (3, 2)])
def test_grids_are_near_square(n, ncols):
    labels = [i % 10 for i in range(n)]  # 10 classes in turn: one image of each is no reason for a row each
    assert grid_layout(made(labels))[1] == ncols
    assert grid_layout(made([None] * n))[1] == ncols


def test_grids_have_a_row_per_class_when_the_classes_fill_even_rows():
    images, ncols = grid_layout(made([0, 1, 2, 0, 1, 2]))
    assert ncols == 2 and [img.getpixel((0, 0)) for img in images] == [0, 3, 1, 4, 2, 5]
    assert grid_layout(made([0, 1] * 50))[1] == 10  # 2 rows of 50 would be a strip: near-square instead


# --- messages ---------------------------------------------------------------------------------------------------

def test_class_names_match_without_case_and_near_misses_get_a_suggestion():
    assert class_index(CLASSES, "Smileys-Emotion") == 2 and class_index(CLASSES, "1") == 1
    with pytest.raises(generate.OptionError, match="did you mean smileys-emotion"):
        class_index(CLASSES, "smileys")
    with pytest.raises(generate.OptionError, match="did you mean dogs"):
        class_index(CLASSES, "dgos")
    with pytest.raises(generate.OptionError, match="unconditional"):
        class_index((), "cats")
