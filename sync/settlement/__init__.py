"""The fleet manager's settlement chain stack: paying contributors through an EVM contract.

Only the fleet manager uses it; nodes never import it. Importing the package costs
nothing: web3.py (the ``fleet`` extra) loads only with the modules that need it.

- :mod:`~sync.settlement.adapter`: :class:`SettlementAdapter`, the facade the fleet uses
  (deploy, anchor checkpoints, post epochs, claims, contract reads), and the names it needs.
- :mod:`~sync.settlement.transactions`: the transaction lifecycle (nonce, signing,
  journaling, broadcast, finality, replacement of stuck transactions).
- :mod:`~sync.settlement.rpc`: the node's JSON-RPC (chain state, receipts, sending),
  with transport and refusal errors mapped.
- :mod:`~sync.settlement.calls`: the contract's calls as bytes (calldata, raw transaction
  decoding, revert decoding).
- :mod:`~sync.settlement.fees`: fees of new and replacement transactions.
- :mod:`~sync.settlement.keys`: the operator account's key file.
- :mod:`~sync.settlement.errors`: the errors, and what a node's refusal means.
- :mod:`~sync.settlement.extra`: the optional dependencies' check.
- :mod:`~sync.settlement.txjournal`: the SQLite journal of signed transactions.
- :mod:`~sync.settlement.payout`: fee splits and the epoch payout tree.
- :mod:`~sync.settlement.contracts`: the Solidity contract, its committed artifact and
  compiler (``python -m sync.settlement.contracts.compile``).
"""
