"""Records round events into a ledger forever; used by the SIGKILL test.

Usage: python ledger_writer.py LEDGER_PATH. After each ``record`` returns it
prints the release id (flushed): those are the releases that "happened".
"""

import sys

from fedlrs.privacy.events import DpEvent
from fedlrs.privacy.ledger import Ledger


def main(path: str) -> None:
    ledger = Ledger(path)
    r = 0
    while True:
        r += 1
        ledger.record(DpEvent(release_id=f"round-{r}", kind="round", noise_multiplier=1.0,
                              sample_rate=0.05, round=r, time=float(r)))
        print(f"round-{r}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
