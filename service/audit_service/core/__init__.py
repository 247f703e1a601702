"""Pure core: decoding, validation, canonical encoding, hashing, cursors. No I/O here."""
