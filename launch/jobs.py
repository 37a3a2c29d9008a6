"""Kept for one release: submitit jobs pickled before the move name `launch.jobs.TrainJob`; a requeued one
still unpickles. The job is `visiontrain.launch.jobs.TrainJob`."""

from visiontrain.launch.jobs import TrainJob

__all__ = ["TrainJob"]
