"""Type stub for ``_alloc.pyx``: the cache of freed output buffers."""
from typing import Any

import numpy as np

MIN_BYTES: int
DEFAULT_LIMIT: int

def set_buffer_cache(nbytes: int) -> None: ...
def buffer_cache_info() -> dict[str, int]: ...
def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...
