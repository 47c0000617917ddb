"""Formal languages and state tracking (Irie, Csordás, Schmidhuber, EMNLP 2023; Grazzi et al.
2025; Siems et al. 2025): the task, its data (satwik77's generators) and its report."""

from experiments.tasks.formal_languages.task import (  # noqa: F401,E402
    ADDED_FIELDS, RESUMABLE, FormalLanguage, make, validate)
