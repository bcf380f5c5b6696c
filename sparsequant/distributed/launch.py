"""`distributed: {nproc_per_node: N}` in a pipeline: re-run the same command under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

from sparsequant.errors import StageError


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def torchrun_command(argv: list[str], nproc_per_node: int) -> list[str]:
    """This interpreter's torch.distributed.run on one machine (--standalone: a local rendezvous)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            "-m", "sparsequant", *argv]


def relaunch(argv: list[str], nproc_per_node: int) -> int:
    """Run `sparsequant ARGV` in N processes and wait; a failed rank stops the others (torchrun)."""
    code = subprocess.call(torchrun_command(argv, nproc_per_node))
    if code != 0:
        raise StageError("distributed", f"the {nproc_per_node}-process run failed (exit code {code}); the failing "
                         "rank's message is above. Finished stages and the last sharded checkpoint are kept: "
                         "fix the cause and re-run the same command to resume")
    return 0
