"""train-draft's checkpoints: written atomically every few minutes, checked against the run's
flags on --resume, restored exactly (weights, optimizer, data cursor, RNG)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from distill.data import Cursor
from models.draft import atomic_write, shipped_state

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1


@dataclass
class Progress:
    step: int = 0
    tokens_seen: int = 0
    minutes: float = 0.0
    cursor: Cursor = field(default_factory=Cursor)
    agreement_start: float | None = None
    vocab_coverage: float = 1.0


def write_checkpoint(config, student, optimizer, progress, extra_minutes: float) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "run": config.run_identity(),
        "student": {k: v.detach().cpu() for k, v in shipped_state(student).items()},
        "optimizer": optimizer.state_dict(),
        "progress": {**asdict(progress), "cursor": [progress.cursor.shard, progress.cursor.batch],
                     "minutes": progress.minutes + extra_minutes},
        "torch_rng": torch.get_rng_state(),
    }
    atomic_write(config.out / CHECKPOINT_FILE, lambda path: torch.save(state, path))


def read_checkpoint(config) -> dict | None:
    """The checkpoint to resume, checked against this run's flags; None for a fresh run."""
    path = config.out / CHECKPOINT_FILE
    if not config.resume:
        if path.exists():
            raise ValueError(f"{path} exists: pass --resume to continue that run, or pick another --out")
        return None
    if not path.exists():
        raise ValueError(f"--resume: no checkpoint at {path} (start a run without --resume first)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"--resume: {path} is checkpoint version {checkpoint.get('version')}, not {CHECKPOINT_VERSION}")
    for key, value in config.run_identity().items():
        if checkpoint["run"][key] != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"--resume: {path} was made with {flag} {checkpoint['run'][key]}, this run has {value}; "
                             "repeat the original flags")
    return checkpoint


def restore(checkpoint: dict, student, optimizer) -> Progress:
    missing, unexpected = student.load_state_dict(checkpoint["student"], strict=False)
    if unexpected or any(k != "model.embed_tokens.weight" for k in missing):
        raise ValueError(f"--resume: the checkpoint does not fit this draft (missing {missing}, unexpected {unexpected})")
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["torch_rng"])
    saved = dict(checkpoint["progress"])
    saved["cursor"] = Cursor(*saved["cursor"])
    return Progress(**saved)
