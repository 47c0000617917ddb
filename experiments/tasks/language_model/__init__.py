"""Language modelling: the task, its text corpora (text_data) and its report."""

from experiments.tasks.language_model.task import (  # noqa: F401
    ADDED_FIELDS, RESUMABLE, LanguageModelling, build_model, corpus, data_identity, encode,
    eval_projection_key, lm_config, lm_loss, load_corpus, make, resumable, use_last_draw,
    validate)
