"""A trial's history from what it trained (its checkpoint) and what Tune recorded (its reports)."""

from trainwise.components.tuning.analysis import trial_history, trial_row


def _epoch(e: int, val_loss: float) -> dict:
    # a row as components/training/loop.py keeps it in every checkpoint
    return {"epoch": e, "train/loss": 1.0 / e, "train/acc": 0.5, "val/loss": val_loss, "val/acc": 0.5,
            "gap/acc": 0.0, "val/best_loss": val_loss, "lr": 1e-3, "epoch_s": 0.5, "samples_per_s": 100.0,
            "restarts": int(e > 2), "checkpoint_s": 0.01}


VAL = [0.9, 0.4, 0.6, 0.5, 0.45, 0.5, 0.55, 0.6]  # the best epoch (2) comes before the pause at the rung


def test_a_paused_and_resumed_trial_reports_every_epoch_once():
    """As seen with ordered ASHA (grace 2): the trial ran epochs 1-8, paused at 2 and resumed; Tune's
    result.json held epochs 3-8 only (restored from a stale copy at the resume)."""
    ran = [_epoch(e, v) for e, v in enumerate(VAL, 1)]
    reported = [{**_epoch(e, VAL[e - 1]), "objective": 0.0, "time_total_s": 10.0 + e} for e in range(3, 9)]
    history = trial_history(ran, reported, metric="val/loss", mode="min")
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert [h["objective"] for h in history] == [0.9] + [0.4] * 7  # the best so far, epoch 2's included
    assert "time_total_s" not in history[0] and history[-1]["time_total_s"] == 18.0  # Tune's keys where reported
    assert "lr" not in history[0] and "restarts" not in history[0]  # the same keys as a report's
    row = trial_row("trial_x", {}, history, metric="val/loss", mode="min", patience=3, usd_per_hour=0.0,
                    max_epochs=8, error=False, budget=False, scheduler="asha")
    assert (row["epochs"], row["stopped_by"], row["best_epoch"], row["best_val/loss"]) == (8, "max_epochs", 2, 0.4)
    assert row["overfit"]  # val/loss above epoch 2's for 6 epochs while train/loss fell


def test_an_epoch_reported_twice_around_a_resume_is_one_row_and_no_checkpoint_keeps_the_reports():
    reported = [_epoch(1, 0.9), _epoch(2, 0.8), _epoch(2, 0.7), _epoch(3, 0.75)]
    history = trial_history([], reported, metric="val/acc", mode="max")
    assert [(h["epoch"], h["val/loss"]) for h in history] == [(1, 0.9), (2, 0.7), (3, 0.75)]
    assert [h["objective"] for h in history] == [0.5, 0.5, 0.5]
