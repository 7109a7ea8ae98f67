"""Contributor documents as they arrive: a JSON Lines upload to the daemon, or a file the
CLI reads (text, Markdown, JSON Lines), parsed into ``(document id, text)`` pairs for
``DatanetStore.add_documents`` (``edged/datanets.py``), and the checks they share."""

from __future__ import annotations

from pathlib import Path

from edged import bounded_json
from edged.errors import InvalidRequest

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MAX_DOCUMENT_ID = 256


def is_unicode_text(value: str) -> bool:
    """False for strings UTF-8 cannot hold (lone surrogates, which JSON allows)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_document_lines(body: bytes) -> list[tuple[str, str]]:
    """A JSON Lines upload, one ``{"id": ..., "text": ...}`` per line, as (id, text) pairs.

    Linear in the body's size (one split, no re-joining of partial lines); anything
    malformed, too deeply nested or not Unicode text is refused with the line's number."""
    documents: list[tuple[str, str]] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = bounded_json.loads(line)
        except (ValueError, RecursionError):
            raise InvalidRequest(f"line {number} is not JSON", param="documents") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) \
                or not isinstance(record.get("id"), str):
            raise InvalidRequest(f"line {number} needs string 'id' and 'text'",
                                 param="documents")
        documents.append((record["id"], record["text"]))
    return documents


def read_document_file(path: Path) -> list[tuple[str, str]]:
    """Parse one file into ``(document id, text)`` pairs.

    Plain text and Markdown are one document each; JSON Lines give one document per
    line, from its ``text`` field (and ``id`` when present). Empty, binary and non-UTF-8
    files are refused with a clear message.
    """
    data = path.read_bytes()
    if not data.strip():
        raise InvalidRequest(f"{path.name} is empty")
    if b"\x00" in data:
        raise InvalidRequest(f"{path.name} looks binary (it contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{path.name} is not UTF-8 (byte {exc.start})") from None
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        documents = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = bounded_json.loads(line)
            except (ValueError, RecursionError):
                raise InvalidRequest(f"{path.name}:{number} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str) \
                    or not record["text"].strip():
                raise InvalidRequest(f"{path.name}:{number} has no non-empty 'text' field")
            doc_id = str(record.get("id") or f"{path.name}:{number}")
            documents.append((doc_id[:MAX_DOCUMENT_ID], record["text"]))
        if not documents:
            raise InvalidRequest(f"{path.name} holds no documents")
        return documents
    if suffix in TEXT_SUFFIXES or not suffix:
        return [(path.name[:MAX_DOCUMENT_ID], text)]
    raise InvalidRequest(f"{path.name}: use .txt, .md or .jsonl files")

