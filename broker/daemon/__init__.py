"""Start-up, signals, reload, binding listeners and the systemd glue: the process around the app.

May import http, core, observe and config; nothing imports it but the command line.
"""
