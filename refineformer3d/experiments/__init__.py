"""Experiments and benchmarks: how the product was measured, kept apart from the product itself.

Nothing outside this package imports it; a test (``tests/test_package.py``) holds that line. Its commands:

* ``python -m refineformer3d.experiments.benchmark``: speed, memory and the machine's limit of every network;
* ``python -m refineformer3d.experiments.summary``: parameters and FLOPs, nothing timed;
* ``python -m refineformer3d.experiments.study``: the equal-budget accuracy study through the bundle's configs;
* ``python -m refineformer3d.experiments.efficiency_ideas``: the measurements behind the efficiency ideas;

and :mod:`~refineformer3d.experiments.distillation`, which ``bundle/configs/distill.json`` trains with.
"""
