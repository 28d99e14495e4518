"""Composition of client streams: segments on the window grid, rate control, renewal arrivals, merging."""

from servegen_ml.compose.arrivals import renewal_arrivals
from servegen_ml.compose.merge import merge_streams
from servegen_ml.compose.rate_control import segment_multipliers, segment_step_s
from servegen_ml.compose.segments import window_segments

__all__ = ["merge_streams", "renewal_arrivals", "segment_multipliers", "segment_step_s", "window_segments"]
