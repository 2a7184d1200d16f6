"""Hypothesis example counts: the profiles conftest registers, and counts scaled to them."""

from __future__ import annotations

from hypothesis import settings

# Hypothesis examples per property: few for a fast inner loop on a developer's machine, many
# under CI (CI=true). `pytest --hypothesis-profile=ci` runs the CI count anywhere.
DEV_EXAMPLES = 25
CI_EXAMPLES = 200


def scaled(ci_examples: int) -> int:
    """Return `ci_examples` under the CI profile, and as much less under a smaller one.

    For a property whose own count differs from the profile's (an expensive example wants
    fewer, a cheap one more): CI keeps the full count, the dev profile runs the same share.
    """
    return max(1, round(ci_examples * settings.default.max_examples / CI_EXAMPLES))
