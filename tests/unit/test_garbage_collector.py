"""The serving process's collector settings (server.tune_garbage_collector)."""

from __future__ import annotations

import gc

from tornadoproxy.process.server import GC_THRESHOLDS, tune_garbage_collector


def test_start_up_objects_frozen_and_old_generation_examined_rarely() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # this test process's modules and objects
        young, middle, old = GC_THRESHOLDS
        # Full collections wait for millions of net new objects (about 17,000 streams' worth) ...
        assert young * middle * old >= 2_000_000
        # ... while the young generations stay small, so their pauses stay short.
        assert young * middle <= 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
