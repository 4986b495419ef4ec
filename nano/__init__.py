"""Nano: distill, quantize, export and benchmark Gemma-family students for on-device use."""

__version__ = "0.1.0"
