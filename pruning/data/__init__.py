"""Tasks, their data and the models that read them: the nine GLUE tasks, IMDB and custom data (`tasks`), finding,
reading strictly and tokenizing a task's files (`loading`), model and tokenizer lookup (`models`), and a model's
metrics on every dev set of its task (`evaluation`).

May import: `pruning.core` and third-party libraries (datasets, transformers, scikit-learn, scipy).
"""
