"""Megatron-Core's own pipeline-schedule bookkeeping for small cases, as JSON (runs in the validators env).

Usage: schedule_check.py '[[pp, vpp, m, group], ...]' -> for every case and pipeline rank, Megatron's
``get_pp_rank_microbatches`` warm-up count and ``get_schedule_table`` order
(megatron/core/pipeline_parallel/schedules.py), which ``configurator/inflight.py`` replays.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".validators" / "megatron-core"))


class _Group:
    def __init__(self, size: int, rank: int) -> None:
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


class _P2P:
    """The two attributes ``get_pp_rank_microbatches`` reads from its communicator."""

    def __init__(self, pp: int, rank: int, vpp: int | None) -> None:
        self.pp_group = _Group(pp, rank)
        self.virtual_pipeline_model_parallel_size = vpp


def main() -> None:
    import _shims

    _shims.install("hopper")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from megatron.core.pipeline_parallel.schedules import get_pp_rank_microbatches, get_schedule_table
    out = []
    for pp, vpp, m, group in json.loads(sys.argv[1]):
        ranks = []
        for rank in range(pp):
            _total, _all, warm, _rest = get_pp_rank_microbatches(
                m, vpp, group, p2p_communicator=_P2P(pp, rank, vpp if vpp > 1 else None))
            ranks.append(warm)
        table = [list(x) for x in get_schedule_table(m, vpp, group)] if vpp > 1 else []
        out.append({"case": [pp, vpp, m, group], "warmup": ranks, "table": table})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
