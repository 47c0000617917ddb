"""The recurrent FWPs' algorithmic tasks (Irie et al. 2021): code execution and sequential
ListOps — the task, its data (the authors' generators) and its report."""

from experiments.tasks.algorithmic.task import (  # noqa: F401
    ADDED_FIELDS, RESUMABLE, Algorithmic, make, model_config, validate)
