"""Task accuracy through lm-evaluation-harness, offline where the data is local.

- `data`: the local file layout of the tasks that run without a hub, and its checks.
- `punkt`: NLTK's `punkt_tab` English model, written from a pip-installed copy, for IFEval.
- `code`: HumanEval(+) scoring with generated code run in `quantbench.sandbox`.
- `harness`: builds lm-eval tasks, picks the same items for every variant, runs them and
  returns one score per item, which `quantbench.metrics.tasks` pairs with the baseline's.

lm-eval is imported only inside functions: planning a study must not pay for it.
"""
