"""The text data set: quotations from Debian's ``fortunes`` package, labelled by their category.

Reads ``/usr/share/games/fortunes/<category>`` (``apt-get install fortunes``; quotations separated
by lines holding only ``%``), drops each quotation's attribution (from the first line that starts
with white space and ``--``: an author's name would give the category away) and splits every
category deterministically: a quotation is in the test split when the first byte of the SHA-1 of
its text is below 256 / 5 (about 20 %), whatever the order of the files.

``python data/make_text_dataset.py`` writes the shipped test split, ``lrpnumpy/data/fortunes_test.npz``
(what the tests, the notebook and ``lrpnumpy.text.fortunes()`` read); ``load(split)`` gives either
split to the training script (``make_text_models.py``).
"""

import argparse
import hashlib
import os
import re
import sys

import numpy as np

FORTUNES = "/usr/share/games/fortunes"
CATEGORIES = ("computers", "politics", "science", "law", "food", "sports")
_ATTRIBUTION = re.compile(r"\n\s+--")


def read_category(name, folder=FORTUNES):
    """The quotations of one category, attributions dropped, white space collapsed, empty ones skipped."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: apt-get install fortunes (or pass --fortunes FOLDER)")
    with open(path, encoding="utf-8", errors="replace") as f:
        parts = re.split(r"^%$", f.read(), flags=re.M)
    out = []
    for p in parts:
        p = _ATTRIBUTION.split("\n" + p.strip("\n"))[0]
        p = " ".join(p.split())
        if p:
            out.append(p)
    return out


def in_test(text):
    return hashlib.sha1(text.encode("utf-8")).digest()[0] < 256 // 5


def load(split, folder=FORTUNES, categories=CATEGORIES):
    """``(texts, labels, classes)`` of the ``"train"`` or ``"test"`` split, in file order per category."""
    texts, labels, seen = [], [], set()
    for k, name in enumerate(categories):
        for t in read_category(name, folder):
            if t in seen:  # a quotation in two categories (or twice) is kept once, in the first
                continue
            seen.add(t)
            if in_test(t) == (split == "test"):
                texts.append(t)
                labels.append(k)
    return texts, np.array(labels, np.int64), tuple(categories)


def main():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from lrpnumpy.text import pack_texts
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fortunes", default=FORTUNES, help="the folder of the fortune files (default %(default)s)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lrpnumpy",
                                                      "data", "fortunes_test.npz"))
    args = parser.parse_args()
    for split in ("train", "test"):
        texts, labels, classes = load(split, args.fortunes)
        print(split, len(texts), dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist())))
    data, offsets = pack_texts(texts)
    np.savez_compressed(args.out, text=data, offsets=offsets, labels=labels, classes=np.array(classes))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
