"""The chain stack's optional dependencies: web3.py and its companions, the ``fleet`` extra.

Every module of :mod:`sync.settlement` imports without them; what needs them calls
:func:`require_extra` first, which raises :class:`SettlementError` naming the extra.
"""

from __future__ import annotations

import importlib

from sync.settlement.errors import SettlementError

__all__ = ["missing_extra", "require_extra"]

_MODULES = ("eth_abi", "requests", "rlp", "eth_account", "eth_typing", "eth_utils", "hexbytes",
            "web3")


def missing_extra() -> str | None:
    """The name of the missing module when the ``fleet`` extra is not installed, else None."""
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return exc.name or str(exc)
    return None


def require_extra() -> None:
    """Raise :class:`SettlementError` saying what to install when the extra is missing."""
    missing = missing_extra()
    if missing is not None:
        raise SettlementError(
            f"settlement needs web3.py, which is not installed ({missing}); "
            "install it with: pip install 'edged[fleet]'")
