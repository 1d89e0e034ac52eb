"""Interpretability methods, one module per method (steering, reading, lens, probes, knockout,
task_vectors, skill_neurons, attribution, das, atp), all following the contract in ``README.md`` beside
this file. Nothing is imported here: ``interpjax.<name>`` or ``from interpjax.methods import <name>``
loads one method when it is used."""
