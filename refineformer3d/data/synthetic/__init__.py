"""Realistic synthetic brain-tumour studies in the BraTS 2017 layout.

Modules: ``template`` (the MNI152 template), ``phantom`` (one case in memory), ``dataset`` (datasets on disk and
the cache), ``preview`` (PNGs), ``cli`` (the command line).

Real BraTS cannot be downloaded everywhere, so the project makes its own studies from the MNI152 template that ships
inside ``nilearn`` (no network needed). Each case is a randomly deformed brain with a glioma-like tumour: a necrotic
core (BraTS label 1), an enhancing rim (label 4) and surrounding edema (label 2) that reaches further along white
matter, some mass effect, and four modalities (FLAIR, T1, T1ce, T2) with BraTS-like relative contrasts, a smooth bias
field, Rician noise and per-case intensity scaling. Images are int16, labels uint8, 1 mm spacing, zero background.

Command line::

    python -m refineformer3d.data.synthetic --output DIR --cases 20 --validation_cases 5 --seed 0 \\
        [--shape 240 240 155] [--preview] [--overwrite] [--recipe default|shifted|shifted:PART+...] \\
        [--contrast_jitter 0.3]

writes::

    DIR/Brats17TrainingData/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz
    DIR/Brats17ValidationData/<case>/<case>_{flair,t1,t1ce,t2}.nii.gz   (no labels)
    DIR/synthetic.json                                                  (generator parameters)
    DIR/preview/<case>.png                                              (with --preview; needs matplotlib)

The same seed gives the same bytes. Case ``i`` draws all its randomness from ``numpy.random.default_rng([seed, 0, i])``
(validation cases from ``[seed, 1, i]``), so a case does not depend on how many cases are made.

``--recipe shifted`` makes out-of-distribution studies from the same brains: another contrast table, tumours of two
to four lobes with other core and edema proportions, more noise, a stronger bias field and thick slices (3-5 mm
along a random axis: voxels of BraTS's grid; on a smaller grid, where the brain is scaled down to fit, the same
thickness of anatomy). ``--recipe shifted:bias+slices`` applies only the parts it names (``contrast``, ``tumours``,
``noise``, ``bias``, ``slices``), to trace an out-of-distribution loss to its cause. ``--contrast_jitter J``
randomises the default table per study (training data). None of these changes the default dataset's bytes or its
cache.

``add_head(case)`` surrounds a case's brain with cerebrospinal fluid, skull, marrow and scalp and fills the air with
noise, on a padded grid: a study as the scanner exports it, for tests of skull stripping.
"""

from .cli import main
from .dataset import ensure_dataset, make_dataset
from .phantom import MODALITIES, RECIPES, SHIFTS, SyntheticCase, add_head, check_recipe, make_case

__all__ = [
    "MODALITIES",
    "RECIPES",
    "SHIFTS",
    "SyntheticCase",
    "add_head",
    "check_recipe",
    "make_case",
    "make_dataset",
    "ensure_dataset",
    "main",
]
