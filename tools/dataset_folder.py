"""What the data set builders share: where data sets go, and making a fresh output folder."""

import pathlib
import shutil
import sys

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def prepare_out(out: pathlib.Path, force: bool) -> None:
    """Create `out`; an existing one is an error unless `force`, which deletes it first."""
    if out.exists():
        if not force:
            sys.exit(f"{out} already exists; pass --force to rebuild it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
