"""Live scanning: segment an ultrasound stream over OpenIGTLink as the probe moves.

PLUS (or any OpenIGTLink image server) streams IMAGE messages; ``sonovlm live`` segments the
newest frame, drops those that arrive while the model works, and serves a labelmap IMAGE with the
frame's own geometry and timestamp plus a STRING of JSON (long and short axis in mm, confidence,
latency) to viewers such as 3D Slicer's OpenIGTLinkIF.

Modules (public names re-exported here):

* :mod:`.geometry`: :class:`LiveFrame`, :class:`StreamGeometry`, :func:`frame_from_message`,
  :func:`label_message`, :func:`frame_message`, :func:`string_message`, :func:`image_message`
  (pyigtl <-> SonoVLM).
* :mod:`.buffer`: :class:`LatestFrameBuffer` (one slot, drops counted).
* :mod:`.smoothing`: :class:`ProbabilitySmoother` (EMA of the lesion probability, optional).
* :mod:`.transport`: :class:`IgtlClient` (reconnecting) and :class:`IgtlServer` (latest-only).
* :mod:`.loop`: :class:`LiveSegmenter` (one frame -> messages; stall and geometry events).
* :mod:`.service`: :class:`LiveService` (all of it wired, what the CLI runs).
* :mod:`.simulator`: :class:`~.simulator.SimulatedPlusServer` (a pyigtl server streaming
  ``sonovlm sample-data`` studies as PLUS would; ``python -m sonovlm.live.simulator``). Not
  imported here (import it from its module).

Importing this package imports pyigtl and numpy, not torch.
"""

from __future__ import annotations

from .buffer import LatestFrameBuffer
from .geometry import (
    LiveFrame,
    StreamGeometry,
    frame_from_message,
    frame_message,
    image_message,
    label_message,
    string_message,
)
from .loop import LiveResult, LiveSegmenter
from .service import LiveService
from .smoothing import ProbabilitySmoother
from .transport import IgtlClient, IgtlServer, parse_address

__all__ = [
    "IgtlClient",
    "IgtlServer",
    "LatestFrameBuffer",
    "LiveFrame",
    "LiveResult",
    "LiveSegmenter",
    "LiveService",
    "ProbabilitySmoother",
    "StreamGeometry",
    "frame_from_message",
    "frame_message",
    "image_message",
    "label_message",
    "parse_address",
    "string_message",
]
