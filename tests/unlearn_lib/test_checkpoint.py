"""Checkpoints are data, verified before use: a torn, tampered or code-carrying file is never loaded."""

from __future__ import annotations

import pickle

import torch

from unlearn_lib.checkpoint import CheckpointManager


class _RunsCode:
    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def _state(step: int) -> dict:
    return {"step": step, "unet": {"w": torch.full((2, 2), float(step))}, "history": {"loss": [0.5, 0.25]}}


def test_the_newest_checkpoint_that_verifies_is_loaded(tmp_path):
    ckpt = CheckpointManager(tmp_path, {"config": 1}, keep=3)
    for step in (5, 10, 15):
        ckpt.save(step, _state(step))
    assert ckpt.latest()["step"] == 15 and torch.equal(ckpt.latest()["unet"]["w"], torch.full((2, 2), 15.0))
    # A crash while writing step 15 left it torn: the digest no longer matches, step 10 is used.
    path = tmp_path / "step-00000015.pt"
    path.write_bytes(path.read_bytes()[:50])
    assert ckpt.latest()["step"] == 10
    # A file swapped in under a valid name without its digest is not trusted either.
    (tmp_path / "step-00000010.pt.sha256").unlink()
    assert ckpt.latest()["step"] == 5


def test_a_checkpoint_that_would_run_code_is_refused_even_with_a_matching_digest(tmp_path, capsys):
    from unlearn_lib.utils import sha256_file

    ckpt = CheckpointManager(tmp_path, {"config": 1})
    ckpt.save(5, _state(5))
    evil = tmp_path / "step-00000009.pt"
    torch.save({"step": 9, "payload": _RunsCode()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    (tmp_path / "step-00000009.pt.sha256").write_text(sha256_file(evil))
    state = ckpt.latest()
    assert state["step"] == 5  # weights_only refuses the pickled call; the older checkpoint is used
    assert "code ran" not in capsys.readouterr().out
