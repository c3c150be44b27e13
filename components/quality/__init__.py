"""Data quality: decoding and validation, duplicates, (later) label errors."""
