"""Format adapters: public trace formats -> the canonical schema. One module per format."""

from __future__ import annotations

from servegen_ml.trace.adapters.azure import AzureAdapter
from servegen_ml.trace.adapters.bailian import BailianAdapter
from servegen_ml.trace.adapters.base import Adapter
from servegen_ml.trace.adapters.burstgpt import BurstGPTAdapter
from servegen_ml.trace.adapters.mooncake import MooncakeAdapter
from servegen_ml.trace.adapters.native import NativeAdapter

# Detection order matters: the first whose columns match wins (bailian before mooncake,
# which share input_length/output_length).
ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a for a in (NativeAdapter, BailianAdapter, MooncakeAdapter, AzureAdapter, BurstGPTAdapter)
}
FORMATS = (*ADAPTERS, "servegen")
