"""minires.heap.keep_freed_memory: freed memory is reused, not faulted in again."""
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")

# Allocate 40 arrays of 1 MiB, touching every page, free them, then do it
# again; print the minor page faults of the second round.  glibc's default
# serves 1 MiB arrays with mmap and unmaps them on free, so the second round
# faults its pages in again; with keep_freed_memory they come from the heap
# and stay with the process.
SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from minires import heap
    if sys.argv[1] == "keep":
        assert heap.keep_freed_memory() is True
    def round_of_arrays():
        arrays = [np.ones(1 << 18, np.float32) for _ in range(40)]  # 40 x 1 MiB
        del arrays
    round_of_arrays()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_of_arrays()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _second_round_faults(mode):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@glibc
def test_freed_arrays_are_reused_instead_of_faulted_in_again():
    pages = 40 * (1 << 20) // 4096  # 10240 pages of 4 KiB
    default, kept = _second_round_faults("default"), _second_round_faults("keep")
    assert default > pages // 2, f"glibc's default refaulted only {default} pages"
    assert kept < pages // 20, f"{kept} page faults with keep_freed_memory (of {pages} pages)"


def test_keep_freed_memory_is_idempotent():
    from minires import heap
    first = heap.keep_freed_memory()
    assert heap.keep_freed_memory() is first
