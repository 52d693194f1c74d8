"""headbits: anomalous-protocol detection from the first payload bytes of Zeek connections."""

__version__ = "0.1.0"
