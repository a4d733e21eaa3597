"""Default budgets that several layers share: plain numbers, importing nothing.

The spec language (``train:`` defaults, read by ``specc check``), the data layer and the runtime's
image decoding name the same limits; keeping them here lets the torch- and numpy-free front end read
them without importing :mod:`specc.data`.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_DATA_BYTES", "DEFAULT_MAX_IMAGE_PIXELS"]

DEFAULT_MAX_DATA_BYTES = 4 * (1 << 30)  # 4 GiB: any one array sized by the data (a split, a batch)
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own warning threshold (1024 * 1024 * 1024 // 4 // 3)
