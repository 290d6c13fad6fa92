"""The shared third-party outcome data, found where the library looks for it, and the marker for tests that need it.

Tests that need the data skip with this reason only when the folder is absent; CI sets ``TIERWISE_NO_SKIPS=1``, so
there a skip fails the run (``tests/conftest.py``).
"""

from __future__ import annotations

import pytest

from tierwise.lab.datasets.paths import shared_data_root

DATA = shared_data_root()
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared outcome data not found at {DATA} (set TIERWISE_SHARED_DATA to its folder)"
)
