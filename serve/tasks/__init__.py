"""The tasks the runtime serves, by name."""

from __future__ import annotations

from serve.errors import ModelLoadError
from serve.tasks.base import Prepared, Task, TaskInfo
from serve.tasks.image_classification import ImageClassification
from serve.tasks.text_to_image import TextToImage

TASKS: dict[str, type[Task]] = {ImageClassification.name: ImageClassification, TextToImage.name: TextToImage}
"""Task name -> implementation."""

__all__ = ["TASKS", "Prepared", "Task", "TaskInfo", "task_class"]


def task_class(name: str) -> type[Task]:
    """The implementation of task `name`, or `ModelLoadError` listing the supported ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ModelLoadError(
            f"task {name!r} is not served by this runtime: supported tasks are {', '.join(sorted(TASKS))}"
        ) from None
