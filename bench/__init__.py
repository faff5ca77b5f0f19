"""Measuring: bench contenders, pass-cost curves, stress."""
