"""The tasks the runtime serves, and how the task of a model is detected."""

from __future__ import annotations

from serve.contract.models import is_image_classifier
from serve.errors import ModelLoadError
from serve.model_source import ModelSource
from serve.tasks.base import Body, Prepared, Task, TaskInfo
from serve.tasks.image_classification import ImageClassification
from serve.tasks.text_to_image import TextToImage

TASKS: dict[str, type[Task]] = {ImageClassification.name: ImageClassification, TextToImage.name: TextToImage}
"""Task name -> implementation."""

__all__ = ["TASKS", "Body", "Prepared", "Task", "TaskInfo", "detect_task", "task_class"]


def detect_task(source: ModelSource) -> str:
    """The task a model is for, from its `config.json` architectures (or `model_index.json`)."""
    if source.read_json("model_index.json") is not None:
        return TextToImage.name
    config = source.read_json("config.json")
    if config is None:
        raise ModelLoadError(f"{source.path} has neither config.json nor model_index.json: is it a model?")
    if is_image_classifier(config):
        return ImageClassification.name
    architectures = config.get("architectures") or []
    raise ModelLoadError(
        f"cannot tell the task of {source.model_id} (architectures: {architectures or 'none'}): "
        f"set BAKE_TASK to one of {', '.join(sorted(TASKS))}"
    )


def task_class(name: str) -> type[Task]:
    """The implementation of task `name`, or `ModelLoadError` listing the supported ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ModelLoadError(
            f"task {name!r} is not served by this runtime: supported tasks are {', '.join(sorted(TASKS))}"
        ) from None
