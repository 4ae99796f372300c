"""Fault injection for tests/test_fault_injection.py. With this folder on PYTHONPATH, every Python
process imports this module at start, Snakemake's job scripts included. It does nothing unless
one of these environment variables is set:

TRSLLAVA_TEST_PAUSE_AFTER   an fnmatch pattern: once os.replace has put a file whose destination
                            path matches (an atomic write just finished), the process writes that
                            path to $TRSLLAVA_TEST_MARKER and sleeps, so that the test can SIGKILL
                            the run at a known point in the middle of a job.
TRSLLAVA_TEST_FSIZE_SCRIPT  a substring of a job script's name (e.g. "embed_texts"): that job runs
TRSLLAVA_TEST_FSIZE_LIMIT   with RLIMIT_FSIZE at this many bytes, so the kernel refuses its writes
                            past that size in the middle of an output, as a full disk does (EFBIG
                            rather than ENOSPC; SIGXFSZ is ignored so that write() returns the error).
"""

import os
import sys

_pause = os.environ.get("TRSLLAVA_TEST_PAUSE_AFTER")
if _pause:
    import fnmatch
    import time

    _replace = os.replace

    def _replace_then_pause(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(os.fspath(dst), _pause):
            with open(os.environ["TRSLLAVA_TEST_MARKER"], "w") as marker:
                marker.write(os.fspath(dst))
            time.sleep(900)  # the test kills the process group here

    os.replace = _replace_then_pause

_script = os.environ.get("TRSLLAVA_TEST_FSIZE_SCRIPT")
if _script and sys.argv and _script in os.path.basename(sys.argv[0] or ""):
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _limit = int(os.environ["TRSLLAVA_TEST_FSIZE_LIMIT"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (_limit, _limit))
