"""What a node's refusal of a transaction means."""

from __future__ import annotations

import pytest

from sync.settlement.errors import Refusal, classify_refusal

# --- node errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "message", "software", "expected"), [
    # besu gives these refusals codes of their own: the code decides
    (-32001, "Nonce too low", "besu", Refusal.NONCE_TOO_LOW),
    (-32004, "Upfront cost exceeds account balance", "besu", Refusal.INSUFFICIENT_FUNDS),
    (-32009, "Gas price below current base fee", "besu", Refusal.FEE_TOO_LOW),
    (-32001, "something new", "besu", Refusal.NONCE_TOO_LOW),
    (-32000, "Replacement transaction underpriced", "besu", Refusal.REPLACEMENT_UNDERPRICED),
    (-32000, "Known transaction", "besu", Refusal.ALREADY_KNOWN),
    # the same numbers mean other things elsewhere: the message decides
    (-32001, "resource not found", "geth", Refusal.OTHER),
    (-32004, "method not supported", "", Refusal.OTHER),
    # geth's -32000, anvil's -32003 and Nethermind's -32010 say only "refused"
    (-32000, "nonce too low", "geth", Refusal.NONCE_TOO_LOW),
    (-32000, "replacement transaction underpriced", "geth", Refusal.REPLACEMENT_UNDERPRICED),
    (-32000, "insufficient funds for gas * price + value", "geth",
     Refusal.INSUFFICIENT_FUNDS),
    (-32000, "transaction underpriced", "geth", Refusal.FEE_TOO_LOW),
    (-32000, "already known", "geth", Refusal.ALREADY_KNOWN),
    (-32003, "max fee per gas less than block base fee", "anvil", Refusal.FEE_TOO_LOW),
    (-32003, "transaction already imported", "anvil", Refusal.ALREADY_KNOWN),
    (-32003, "Insufficient funds for gas * price + value", "anvil",
     Refusal.INSUFFICIENT_FUNDS),
    (-32010, "OldNonce", "nethermind", Refusal.NONCE_TOO_LOW),
    (None, "nonce too low", "", Refusal.NONCE_TOO_LOW),
    (-32003, "Nonce too high", "anvil", Refusal.OTHER),
])
def test_node_errors_are_classified_by_code_where_the_node_has_one(
        code: int | None, message: str, software: str, expected: Refusal) -> None:
    assert classify_refusal(code, message, software) is expected
