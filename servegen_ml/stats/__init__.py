"""Trace statistics shared by characterization and the benchmark (pure numpy/pandas).

Each module holds the in-memory definition of its statistics and, where the
characterization needs it, a streaming accumulator that computes the same
numbers chunk by chunk with bounded memory: ``arrivals`` (inter-arrival CV per
window, index of dispersion, Exponential/Gamma/Weibull fits), ``lengths``,
``clients``, ``multimodal``, ``reasoning``, ``conversations``, ``dependence``
(Spearman overall and within client); building blocks in ``windows``,
``histogram`` and ``sampling``.
"""
