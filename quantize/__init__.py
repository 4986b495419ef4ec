"""Nano quantize: see the project's issues; the foundation (nano/) is what exists today."""
