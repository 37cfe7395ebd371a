"""`rewards.math_worker` with failures on demand, for the pool's hang/crash tests.

A predicted answer of HANG sleeps forever, DIE kills its own worker with SIGKILL, and HOG allocates
far more memory than the worker's address-space limit; anything else is verified normally.
"""

import os
import signal
import time

from rewards import math_worker

init = math_worker.init


def handle(item):
    pred = item[0]
    if pred == "HANG":
        time.sleep(3600)
    if pred == "DIE":
        os.kill(os.getpid(), signal.SIGKILL)
    if pred == "HOG":
        return bytearray(64 << 30)  # 64 GiB: MemoryError under RLIMIT_AS
    return math_worker.handle(item)
