"""Interpretability methods, one module per method (steering, reading, lens, probes, knockout,
task_vectors, task_arithmetic, skill_neurons, attribution, das, atp, eap, sae, sae_bank,
anomalous_tokens, input_search), all following the contract in ``README.md`` beside
this file. Nothing is imported here: ``interpjax.<name>`` or ``from interpjax.methods import <name>``
loads one method when it is used."""
