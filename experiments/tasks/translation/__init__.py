"""Machine translation (the paper's Table 1): the task, its data (WMT14 files or Debian's message
catalogs, a joint BPE vocabulary, length-bucketed batches) and its report."""

from experiments.tasks.translation.task import (  # noqa: F401
    ADDED_FIELDS, RESUMABLE, Translation, data_identity, make, model_config, validate)
