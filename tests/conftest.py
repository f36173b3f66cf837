"""Suite-wide settings.

JAX's persistent compilation cache, shared by every test process: the pytest-xdist
workers and the subprocesses the CLI tests start. Many tests build the same tiny models,
and on a 2-core CPU a model's initialisation alone is ~80 small XLA compilations
(~25 s): with the cache, only the first test that builds a model pays for it. A cached
executable is the one XLA would compile, so no result depends on the cache; a test
that studies the cache itself (test_bench's GPU session script) sets its own folder.

Set through the environment, before any test module imports JAX, so that subprocesses
inherit it; a value already in the environment wins.
"""

import os
import tempfile

_CACHE = os.path.join(tempfile.gettempdir(), f"atjax-test-jax-cache-{os.getuid()}")

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
# Every program, however quick to compile: the initialisers' are ~0.3 s each.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# No size limit: with one, every write lists and reads the whole folder under a lock that
# every read waits for, which made the suite minutes longer. Without the lock
# a read can meet an entry still being written; JAX then warns and compiles instead.
