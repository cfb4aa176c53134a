"""Start-up objects frozen out of Python's full garbage collections (``lipsync_rt/gc_tuning.py``)."""

from __future__ import annotations

import gc

from lipsync_rt.gc_tuning import freeze_startup_objects, thaw


def test_start_up_objects_are_frozen_out_of_full_collections():
    before = object.__new__(type("StartUp", (), {}))
    try:
        assert freeze_startup_objects() == gc.get_freeze_count() > 0
        after = [object.__new__(type("Later", (), {}))]
        tracked = {id(o) for o in gc.get_objects()}
        assert id(before) not in tracked            # skipped by every collection from now on
        assert id(after) in tracked                 # what comes later is collected as before
    finally:
        thaw()
    assert gc.get_freeze_count() == 0
    assert id(before) in {id(o) for o in gc.get_objects()}    # the collector's again once live work ends
