"""Figures and advice drawn from scores: training curves, confusion matrices, the verify plots, the
runtime recommendation. Imports the core and runtime."""
