"""Shipping the exported model: INT8, the model card, predict, the service and the CLI.

Nothing here imports torch (an import-linter contract in pyproject.toml holds that).
"""
