"""TOML to frozen settings, and the value types and errors every layer shares.

The bottom layer: imports nothing else of `broker`.
"""
