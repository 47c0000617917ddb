"""Associative retrieval (Section 6.1): the task, its data (made inside the jitted step from
(seed, step)) and its report."""

from experiments.tasks.associative_recall.task import (  # noqa: F401
    ADDED_FIELDS, RESUMABLE, AssociativeRecall, build_model, make, retrieval_loss, validate)
