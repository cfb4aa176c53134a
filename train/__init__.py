"""Corpus builders and training scripts; a package so that tests and the scripts share one import path."""
