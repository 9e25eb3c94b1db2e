"""Simulated B-mode ultrasound studies: lymph nodes, breast lesions and thyroid nodules.

The data behind ``sonovlm sample-data`` and ``make demo``, and a source of test images for the
rest of the package. Nothing here is patient data: patient fields are synthetic
(``SONOVLM^SAMPLE``), dates fixed, UIDs derived from the seed, and the same seed writes the same
bytes.

Image formation (:mod:`.bmode`): fully developed Rayleigh speckle (complex Gaussian scatterers
scaled by the tissue's echogenicity, a Gaussian PSF, envelope detection), frequency-dependent
round-trip attenuation in dB/cm/MHz accumulated along each scan line (so attenuating masses cast
posterior shadows), receiver noise, time-gain compensation and log compression to 8 bits, for a
10 MHz linear-array probe. Anatomy and lesion appearance (:mod:`.anatomy`): layered soft tissue
and a lesion of the organ's kind with its benign or malignant features. Frames
(:mod:`.simulate`): 480 × 640 with a calibrated B-mode region inside and burned-in text, a depth
ruler and markers outside it. Files (:mod:`.dicom`, :mod:`.studies`): US DICOM with
SequenceOfUltrasoundRegions, PNG masks in ``labels/final`` for about half the cases, ``cases.csv``.

Public API:

* :func:`write_sample_studies` (``directory, count, seed -> list[Case]``) and :func:`read_cases`.
* :func:`simulate_case` (``rng, organ, pathology -> (image, mask, SimulationMeta)``).
"""

from .simulate import SimulationMeta, imaging_region, simulate_case
from .studies import CASES_COLUMNS, CASES_CSV, LABELS_DIR, Case, case_plan, read_cases, write_sample_studies

__all__ = [
    "CASES_COLUMNS",
    "CASES_CSV",
    "LABELS_DIR",
    "Case",
    "SimulationMeta",
    "case_plan",
    "imaging_region",
    "read_cases",
    "simulate_case",
    "write_sample_studies",
]
