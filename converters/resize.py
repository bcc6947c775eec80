"""resize layers (see ARCHITECTURE.md, How to add a layer type)."""
from __future__ import annotations
