"""Auto-segmentation results as DICOM SEG: the ``result_format: "dicom_seg"`` request param.

MONAI Label's own ``output=dicom_seg`` path needs dcmqi (downloaded from the internet) and a NIfTI
image, and codes every segment as the spleen; it is not used. Instead the segmentation task's
writer calls :func:`write_result_seg` when :func:`wants_dicom_seg` says the request asked for it:
the result is a SEG over the input DICOM (an ``AUTOMATIC`` segment whose Algorithm Identification
names SonoVLM and the served model version, coded for the organ, measurements in its
description), made by :func:`sonovlm.dicomseg.segmentation_to_dicom_seg`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SonoInputError

#: The request param and its values (first = default: a mask file as ``result_extension`` says).
RESULT_FORMAT_PARAM = "result_format"
RESULT_FORMATS: tuple[str, ...] = ("mask", "dicom_seg")


def wants_dicom_seg(request: Mapping[str, Any]) -> bool:
    """Whether ``request`` asks for a DICOM SEG; :class:`SonoInputError` for an unknown format.

    A list (a client that sent the config's option list back) counts as its first item.
    """
    value = request.get(RESULT_FORMAT_PARAM)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    text = str(value).strip().lower() if value is not None else ""
    if text in ("", RESULT_FORMATS[0]):
        return False
    if text == "dicom_seg":
        return True
    raise SonoInputError(RESULT_FORMAT_PARAM, f"unknown {value!r}; choose one of {', '.join(RESULT_FORMATS)}")


def write_result_seg(
    image_path: str | os.PathLike,
    mask: np.ndarray,
    organ: str,
    *,
    frame: int,
    model_version: str,
    measurements: Mapping[str, Any] | None = None,
) -> str:
    """Write the SEG of one result to a temporary ``.dcm`` file and return its path.

    Args:
        image_path: the input image (must be DICOM: a SEG references its source instance).
        mask: ``(rows, cols)`` of frame ``frame``, non-zero = lesion.
        organ: the organ segmented.
        frame: 0-based frame of the input the mask belongs to.
        model_version: the served model's version.
        measurements: the result's measurements (:meth:`LesionMeasurement.to_dict`), or ``None``.

    Raises :class:`SonoInputError` when the input is not DICOM or the mask does not fit it.
    """
    from ..dicomseg import SegAlgorithm, segmentation_to_dicom_seg
    from ..io.formats import DICOM, sniff

    if sniff(image_path) != DICOM:
        raise SonoInputError(
            RESULT_FORMAT_PARAM, "dicom_seg needs a DICOM input image (a SEG references its source instance)"
        )
    seg = segmentation_to_dicom_seg(
        image_path,
        mask,
        organ,
        frame=frame,
        measurements=measurements,
        algorithm=SegAlgorithm(name="SonoVLM", version=str(model_version)[:64]),
    )
    fd, path = tempfile.mkstemp(prefix="sonovlm-seg-", suffix=".dcm")
    os.close(fd)
    seg.save_as(path, write_like_original=False)
    return path
