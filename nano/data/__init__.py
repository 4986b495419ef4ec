"""Real-text data: Debian docs / folders / JSONL → cleaned, deduplicated token shards."""

from nano.data.debian import ensure_debian_docs, find_debian_docs
from nano.data.prepare import Manifest, prepare
from nano.data.shards import TokenSplit, eval_windows
from nano.data.sources import DEFAULT_SOURCES, Source

__all__ = ["DEFAULT_SOURCES", "Manifest", "Source", "TokenSplit", "ensure_debian_docs", "eval_windows", "find_debian_docs", "prepare"]
