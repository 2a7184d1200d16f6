"""The canonical skeleton of a decoded path, for matching protected paths (no aiohttp).

Backends read paths more loosely than the policy does: Unicode normalisation and case
folding (fullwidth letters, `APIKEYS`, dotless i U+0131), invisible format characters
(`apikeys` + U+200B),
`;` path parameters (Tomcat, Jetty, Spring), suffix pattern matching (`apikeys.json` is
`apikeys` to Spring MVC before 5.3), trailing dots and NTFS alternate data streams
(`apikeys.`, `apikeys::$DATA` on IIS), and backup or archive names a static handler might
serve beside a resource (`apikeys.json.bak`, `apikeys.tar.gz`). Protected patterns are
matched against this skeleton as well as the path itself, so every such reading is refused:
it denies more, never less.
"""

from __future__ import annotations

import re
import unicodedata

# Characters with no plain-ASCII skeleton of their own that fold to a Latin letter.
_CONFUSABLES = str.maketrans({"\u0131": "i", "\u0237": "j", "\u017f": "s", "\u0138": "k"})
# A path needs a skeleton of its own only when it has something the skeleton removes or
# rewrites; plain ASCII paths without `;`, `.` or `:` are their own skeleton (case aside).
_NEEDS_SKELETON = re.compile(r"[^\x21-\x7e]|[;.:]")


def needs_skeleton(path: str) -> bool:
    """Return True when the path's skeleton may differ from its case-folded form."""
    return _NEEDS_SKELETON.search(path) is not None


def _segment_skeleton(segment: str) -> str:
    segment = segment.split(";", 1)[0]  # path parameters
    segment = segment.split(":", 1)[0]  # NTFS streams (`name::$DATA`, `name:stream`)
    segment = segment.rstrip(".")  # trailing dots (Windows drops them)
    # Every trailing `.extension` (`apikeys.json.bak`, `apikeys.tar.gz`): the name is what
    # comes before the first dot after any leading ones (`.well-known` stays whole).
    body = segment.lstrip(".")
    name = body.partition(".")[0]
    return segment[: len(segment) - len(body)] + name if name else segment


def path_skeleton(path: str) -> str:
    """Return the skeleton of a decoded path: folded, invisible characters removed, per segment
    parameters, streams, trailing dots and every trailing extension removed."""
    text = unicodedata.normalize("NFKC", path).casefold().translate(_CONFUSABLES)
    # Decompose, then drop combining marks (`İ` folds to `i` + U+0307) and format characters.
    text = "".join(
        c
        for c in unicodedata.normalize("NFKD", text)
        if unicodedata.category(c) not in ("Mn", "Cf")
    )
    text = unicodedata.normalize("NFC", text)
    return "/".join(_segment_skeleton(segment) for segment in text.split("/"))
