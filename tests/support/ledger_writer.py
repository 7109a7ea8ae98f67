"""Crash-test helper: append receipts concurrently forever, printing each after commit.

Run as ``python -m tests.support.ledger_writer LEDGER_PATH KEY_LABEL [WRITERS]``. Each
line ``SEQ LEAF_HEX`` is printed (and flushed) only after ``Ledger.append``
returned, so the test that SIGKILLs this process may require every printed
receipt to be in the ledger.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from edged.ledger import Ledger
from tests.support.receipt_factory import key_from, make_draft


async def _write_forever(ledger: Ledger, writers: int) -> None:
    async def writer(index: int) -> None:
        i = index
        while True:
            receipt = await ledger.append(make_draft(i))
            sys.stdout.write(f"{receipt.seq} {receipt.leaf.hex()}\n")
            sys.stdout.flush()
            i += writers

    await asyncio.gather(*(writer(index) for index in range(writers)))


def main(argv: list[str]) -> None:
    path, label = Path(argv[0]), argv[1]
    writers = int(argv[2]) if len(argv) > 2 else 8
    with Ledger(path, key_from(label)) as ledger:
        asyncio.run(_write_forever(ledger, writers))


if __name__ == "__main__":
    main(sys.argv[1:])
