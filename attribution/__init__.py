"""Receipts (format, canonical encoding, signing) and attribution engines.

This package imports no other package of the project.
"""
