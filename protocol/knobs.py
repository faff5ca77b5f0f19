"""A frozen config field that carries its CLI flag and help, so each knob is written once: the
drafter's and the verifier's configs declare them, launch.config builds the flags, the configs and
a child process's argv from them. Torch-free, like the rest of protocol/."""
from __future__ import annotations

from dataclasses import field


def knob(default, flag: str, help: str, inverted_by: bool = False):
    """A field with its CLI flag; `inverted_by`: a store_true flag that sets the bool False."""
    return field(default=default, metadata={"flag": flag, "help": help, "inverted_by": inverted_by})
