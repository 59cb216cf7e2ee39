"""On-disk image formats, one module each: magic, version, header decoding."""
