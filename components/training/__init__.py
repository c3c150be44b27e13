"""Distributed training: the per-worker loop, and the driver that runs it on Ray Train."""
