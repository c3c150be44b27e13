"""Run stages on a Ray cluster: stage inputs and outputs through shared storage, work as Ray Jobs."""
