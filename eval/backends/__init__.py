"""Pluggable networks behind the VBench formulas: weight-free defaults and local-checkpoint loaders."""
