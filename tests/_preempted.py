"""A `pipe train` stopped as SIGTERM would stop it, at a chosen step (in-process)."""

from __future__ import annotations

from orthosae.common import preempt


def train_preempted_at(monkeypatch, pipe, path, step: int = 45, *args: str) -> None:
    """Run ``pipe(path, *args, "train")`` with a preemption request at ``step``: it must exit 75,
    leaving checkpoints; the real step and a clear preemption flag are restored after."""
    from orthosae.train.trainer import Trainer

    real = Trainer.train_step

    def stop_at(self, x, is_forget):
        out = real(self, x, is_forget)
        if self.step == step:
            preempt.request()
        return out

    monkeypatch.setattr(Trainer, "train_step", stop_at)
    try:
        assert pipe(path, *args, "train").exit_code == preempt.EXIT_PREEMPTED
    finally:
        monkeypatch.setattr(Trainer, "train_step", real)
        preempt.clear()
