"""Developer tools that the tests and the benchmarks share; the daemon itself never imports them.

Why here: a benchmark is a script, not a test, so ``bench/`` may not import ``tests/``
(``tests/test_bench_imports.py`` checks it), yet both need the same tiny models and the same
way to run a daemon. These helpers are useful on their own to anyone who develops against
edged (a 2-layer GGUF that loads in milliseconds, tiny ONNX graphs, a real ``edged serve``
subprocess, a throwaway PostgreSQL cluster, a node's receipt log without a daemon, the
``influence/1`` fidelity experiment), so they live in a small package of the project rather
than in ``bench/`` (which tests would then depend on) or a new top-level folder. What is tied
to pytest (fixtures, the event-loop watchdog, receipt factories) stays in ``tests/support/``.
Some modules need the ``test`` extra (``gguf``, ``scikit-learn``) or the ``fleet`` extra
(``psycopg``); nothing outside this package imports it, so the daemon never needs them.
"""
