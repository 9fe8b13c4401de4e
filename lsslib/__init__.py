"""lsslib: MTT-LSS, dataset distillation through low-rank space sampling.

Modules, one idea each: :mod:`~lsslib.config` (validated parameters, profiles),
:mod:`~lsslib.artifacts` (safetensors + JSON, atomic writes), :mod:`~lsslib.data`
(datasets as tensors, ZCA), :mod:`~lsslib.models` (ConvNet family),
:mod:`~lsslib.augment` (DSA), :mod:`~lsslib.experts` (expert trajectories),
:mod:`~lsslib.synset` (synthetic-set parameterisations, soft labels, storage),
:mod:`~lsslib.distill` (trajectory matching, schedules), :mod:`~lsslib.evaluate`
(meta-test protocol), :mod:`~lsslib.plots` (the book's figures).
"""

__version__ = "0.1.0"
