"""``alignlab <argv>`` with the RL stages' sampler made independent of how prompts are split (run by
test_rl_distributed.py, in one process or under torchrun).

In a real run each process samples its share of a rollout from its own stream, so the tokens
depend on the number of processes. Here every response is sampled alone, from a stream seeded by
its prompt, its place in the prompt's group and the call's number: the same tokens in one process
and in two, so everything after sampling can be compared exactly. A resumed run says in
``ROW_SEEDED_CALLS_BEFORE`` how many calls the run made before its checkpoint (one per step).
"""

import dataclasses
import os
import sys
import zlib

import alignlab.rollout.vllm_engine as engines
from alignlab.cli import main

_make = engines.make_engine


class RowSeeded:
    def __init__(self, engine):
        self.engine, self.calls = engine, int(os.environ.get("ROW_SEEDED_CALLS_BEFORE", "0"))

    def generate(self, prompts, params):
        self.calls += 1
        seen: dict = {}
        out = []
        for p in prompts:
            seen[tuple(p)] = seen.get(tuple(p), -1) + 1  # the row's place among this prompt's k rows
            seed = zlib.crc32(repr((tuple(p), seen[tuple(p)], self.calls, params.seed)).encode())
            out += self.engine.generate([p], dataclasses.replace(params, seed=seed))
        return out

    def sync_weights(self):
        self.engine.sync_weights()


engines.make_engine = lambda *a, **k: RowSeeded(_make(*a, **k))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
