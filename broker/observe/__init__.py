"""Logs, secret redaction, the audit trail and Prometheus metrics.

May import config only.
"""
