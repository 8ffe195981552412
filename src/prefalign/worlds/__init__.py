"""Synthetic, checkable worlds for studies. Nothing below the apps imports this package: a
world's metrics and judges reach callbacks and pipelines by ``_target_`` / dotted path."""
