"""lsslib: MTT-LSS, dataset distillation through low-rank space sampling.

Modules, one job each: :mod:`~lsslib.config` (validated stage parameters),
:mod:`~lsslib.profiles` (experiment profiles), :mod:`~lsslib.artifacts` (safetensors +
JSON, atomic commits, disk checks), :mod:`~lsslib.locking` (one writer per folder),
:mod:`~lsslib.data` (datasets as tensors, ZCA), :mod:`~lsslib.models` (ConvNet
family), :mod:`~lsslib.augment` (DSA), :mod:`~lsslib.training` (networks trained
together), :mod:`~lsslib.experts` (expert trajectories),
:mod:`~lsslib.parameterisations` (the registry of synthetic-set parameterisations,
one module each), :mod:`~lsslib.synset` (initialisation, soft labels, the set's
artifact), :mod:`~lsslib.plan` (start-epoch schedules, an iteration's plan),
:mod:`~lsslib.matching` (matching loss and gradient modes), :mod:`~lsslib.tesla`,
:mod:`~lsslib.distill` (a run's lifecycle), :mod:`~lsslib.evaluate` (meta-test
protocol), :mod:`~lsslib.results` (where artifacts live, evaluation records),
:mod:`~lsslib.stages` (what each notebook runs), :mod:`~lsslib.plots`,
:mod:`~lsslib.report`, :mod:`~lsslib.summary` (the book's tables).
"""

__version__ = "0.1.0"
