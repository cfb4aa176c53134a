"""Placeholder: being written (see the issue); replaced by the real command."""

import argparse

DESCRIPTION = "Not written yet."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("lipsync-rt: error: this command is not written yet")
