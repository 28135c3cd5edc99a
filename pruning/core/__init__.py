"""The pruning mechanism, model by model: what can be pruned (`units`) and where each architecture family keeps it
(`layouts`), the criterion base classes (`criterion`), scores to exact-count keep-masks (`masks`), physical removal
and gates on unit outputs (`surgery`), the Fisher information of mask gates (`fisher`), and the classes that load a
model whose layers keep different numbers of heads and neurons (`pruned_model`).

May import: torch, transformers, numpy, the standard library and the top-level `earlybird` detector; nothing else
of `pruning`. `layouts.py` and `pruned_model.py` are copied next to every saved heads+neurons model and imported
there as siblings, so they import only torch, transformers, the standard library and each other.
"""
