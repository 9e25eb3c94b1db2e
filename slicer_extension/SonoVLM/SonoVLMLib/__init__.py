"""Qt-free parts of the SonoVLM Slicer module.

* :mod:`.client`: the server's HTTP client (standard library only).
* :mod:`.scene`: ultrasound cases, segments, measurement lines and labels in an MRML scene.
* :mod:`.workflow`: the annotation workflow (``SonoVLMLogic`` in the module is this).
* :mod:`.measurement`, :mod:`.geometry`, :mod:`.dicom_header`, :mod:`.organs`, :mod:`.replies`:
  the pieces they use.

``slicer`` and ``vtk`` are imported inside functions, so every module here imports outside
Slicer (tests use the ``slicer-core`` package for the MRML parts).
"""

from __future__ import annotations

from .client import SonoVLMClient, SonoVLMClientError

__all__ = ["SonoVLMClient", "SonoVLMClientError"]
