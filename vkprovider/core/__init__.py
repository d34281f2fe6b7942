"""The pure core: data types and functions with no I/O and no asyncio, so every rule is unit-testable."""
