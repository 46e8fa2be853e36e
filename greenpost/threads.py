"""CPU thread policy of the keyer: single-threaded ops, images keyed in parallel.

GreenPost is about a thousand small ops per image. With torch's (and OpenCV's) own thread pools each op is split
across the cores and ends in a barrier; as soon as anything else uses a core (a UI, a browser, another node, the
next image's PNG decode) a barrier waits for a descheduled thread, and keying collapsed: on this project's 2-core
machine, beside one busy process, the default 2 threads took 0.17-1.7 s/MP against 0.10-0.13 s/MP with 1 thread
(issue 17; ``bench/keying.py --user-path``). So inside :func:`keying_threads` torch and OpenCV run single-threaded
and a batch is split into one part per thread the caller allowed (``torch.get_num_threads()``: the user's setting),
keyed side by side by Python threads (torch and OpenCV release the GIL): no barriers between the cores at all.
The settings are restored on the way out, so the user's torch and OpenCV settings outlive the call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_lock = threading.Lock()
_inside = 0  # keying calls inside the block, process-wide (OpenCV's thread setting is process-wide)
_opencv_saved: int | None = None  # OpenCV's thread count on entry of the first


@contextlib.contextmanager
def keying_threads(device) -> Iterator[int]:
    """Within the block, on the CPU: torch (this thread's intra-op setting, which threads started inside inherit)
    and OpenCV (process-wide, restored when the last concurrent block exits) single-threaded; yields how many parts
    a batch may be keyed in side by side (this thread's torch thread count on entry, at least 1). Off the CPU it
    changes nothing and yields 1."""
    global _inside, _opencv_saved
    if torch.device(device).type != "cpu":
        yield 1
        return
    import cv2

    with _lock:
        if _inside == 0:
            _opencv_saved = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _inside += 1
    mine = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield max(1, mine)
    finally:
        torch.set_num_threads(mine)
        with _lock:
            _inside -= 1
            if _inside == 0:
                cv2.setNumThreads(_opencv_saved)
                _opencv_saved = None
