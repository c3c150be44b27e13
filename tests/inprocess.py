"""A one-rank training session for ``run_loop`` in the test process (no Ray Train)."""

import torch


class InProcessSession:
    """Keeps the prepared model and records every epoch's report in ``reports``."""

    rank, world, device = 0, 1, torch.device("cpu")

    def __init__(self):
        self.model, self.reports = None, []

    def prepare_model(self, m):
        self.model = m
        return m

    def checkpoint(self):
        return None

    def report(self, metrics, checkpoint_dir, history):
        self.reports.append(metrics)
