"""The command line (`pc-token-broker`), its stdlib-only client of the running daemon, and the demo.

The top layer: may import every layer below (daemon, http, core, observe, config) and the sandbox.
"""
