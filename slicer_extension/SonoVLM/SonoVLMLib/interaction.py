"""Interactive prompts in Slicer's world turned into the server's voxel form, and the undo history
of contours, without Qt.

Slicer places clicks (markups control points) and boxes (markups ROI, or two points) in RAS
millimetres. The server's ``interactive`` and ``propagate`` tasks take what the stock MONAI Label
plugin sends: points as rounded 0-based ``[i, j, k]`` voxel indices (i = column, j = row, k =
cine frame) and a box as the inclusive ``roi`` ``[i_min, i_max, j_min, j_max, k_min, k_max]``.
A frame is a one-slice volume, so its RAS-to-IJK gives k = 0; the cine frame shown replaces it.

``slicer`` and ``vtk`` are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def ras_to_ijk_matrix(volume: Any) -> np.ndarray:
    """The 4x4 RAS-to-IJK matrix of a volume node (the inverse of its IJK-to-RAS)."""
    import vtk

    from .geometry import matrix_to_array

    matrix = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(matrix)
    return matrix_to_array(matrix)


def ras_to_voxels(
    ras_to_ijk: np.ndarray, points_ras: Sequence[Sequence[float]], frame: int = 0
) -> list[list[int]]:
    """``[i, j, k]`` voxel indices of RAS points on a one-slice frame: i = column, j = row,
    rounded to the nearest voxel centre; k = ``frame`` (the cine frame), whatever slice offset the
    points had."""
    points = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    ras1 = np.column_stack([points, np.ones(len(points))])
    ijk = (np.asarray(ras_to_ijk, dtype=float) @ ras1.T).T[:, :2]
    # floor(x + 0.5), not np.rint: a click exactly between two voxels always goes to the higher one.
    rounded = np.floor(ijk + 0.5).astype(int)
    return [[int(i), int(j), int(frame)] for i, j in rounded]


def box_roi(
    ras_to_ijk: np.ndarray, corner_a: Sequence[float], corner_b: Sequence[float], frame: int = 0
) -> list[int]:
    """The server's inclusive ``roi`` ``[i_min, i_max, j_min, j_max, k_min, k_max]`` of a box given
    by two opposite RAS corners in any order (k = ``frame`` for both ends)."""
    (i_a, j_a, _), (i_b, j_b, _) = ras_to_voxels(ras_to_ijk, [corner_a, corner_b], frame)
    return [min(i_a, i_b), max(i_a, i_b), min(j_a, j_b), max(j_a, j_b), int(frame), int(frame)]


def control_points_ras(markups: Any) -> list[tuple[float, float, float]]:
    """World (RAS) positions of a markups node's defined control points."""
    positions = []
    for index in range(markups.GetNumberOfControlPoints()):
        if hasattr(markups, "GetNthControlPointPositionStatus") and (
            markups.GetNthControlPointPositionStatus(index) != markups.PositionDefined
        ):
            continue  # a point being placed, or one the user removed
        point = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(index, point)
        positions.append((float(point[0]), float(point[1]), float(point[2])))
    return positions


def roi_corners_ras(roi: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Two opposite RAS corners of a markups ROI node (its axis-aligned RAS bounds)."""
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    return (bounds[0], bounds[2], bounds[4]), (bounds[1], bounds[3], bounds[5])


@dataclass
class Prompts:
    """Clicks and box of the frame being corrected, in the server's voxel form.

    Attributes:
        frame: the frame they are on.
        foreground, background: ``[i, j, k]`` positive / negative clicks, in placement order.
        roi: ``[i_min, i_max, j_min, j_max, k_min, k_max]`` or ``None``.
    """

    frame: int
    foreground: list[list[int]] = field(default_factory=list)
    background: list[list[int]] = field(default_factory=list)
    roi: list[int] | None = None

    def copy(self) -> Prompts:
        return Prompts(
            self.frame,
            [list(p) for p in self.foreground],
            [list(p) for p in self.background],
            list(self.roi) if self.roi is not None else None,
        )

    def is_empty(self) -> bool:
        return not self.foreground and not self.background and self.roi is None

    def as_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`.client.interaction_params` (without organ and prompt)."""
        return {
            "foreground": [list(p) for p in self.foreground],
            "background": [list(p) for p in self.background],
            "roi": list(self.roi) if self.roi is not None else None,
            "frame": self.frame,
        }


@dataclass(frozen=True)
class ContourSnapshot:
    """A segment's contour before one interaction, to restore on undo.

    Attributes:
        case_key: the case's volume node id (snapshots of another case are not restored).
        organ: the organ whose segment changed.
        frame: the frame the segment was on (``None`` for a single image).
        mask: ``(rows, cols)`` uint8 labelmap of the segment, or ``None`` when it did not exist.
        prompts: the clicks and box before the interaction.
    """

    case_key: str
    organ: str
    frame: int | None
    mask: np.ndarray | None
    prompts: Prompts


class ContourHistory:
    """A bounded stack of :class:`ContourSnapshot` (the oldest is dropped beyond ``depth``)."""

    def __init__(self, depth: int = 20) -> None:
        if depth < 1:
            raise ValueError(f"undo depth must be at least 1, got {depth}")
        self.depth = depth
        self._snapshots: list[ContourSnapshot] = []

    def push(self, snapshot: ContourSnapshot) -> None:
        self._snapshots.append(snapshot)
        del self._snapshots[: -self.depth]

    def pop(self, case_key: str) -> ContourSnapshot | None:
        """The latest snapshot of ``case_key`` (removed), ``None`` when there is none."""
        for index in range(len(self._snapshots) - 1, -1, -1):
            if self._snapshots[index].case_key == case_key:
                return self._snapshots.pop(index)
        return None

    def forget(self, case_key: str) -> None:
        self._snapshots = [s for s in self._snapshots if s.case_key != case_key]

    def __len__(self) -> int:
        return len(self._snapshots)


@dataclass(frozen=True)
class FrameConfidence:
    """One propagated frame and the server's confidence in it (``None``: not given)."""

    frame: int
    confidence: float | None

    def text(self) -> str:
        value = f"{self.confidence:.2f}" if self.confidence is not None else "n/a"
        return f"Frame {self.frame}: confidence {value}"


def review_order(result: dict[str, Any]) -> list[FrameConfidence]:
    """The propagated frames weakest first (review order), from a ``propagate`` reply.

    Uses the reply's ``confidence`` per frame (``None`` = not segmented) and orders by confidence,
    then frame; ``review_first`` (the server's own order) must name the same frames.
    """
    confidence = result.get("confidence")
    if not isinstance(confidence, list):
        raise ValueError(f"the propagate reply has no per-frame confidence list: {result!r}")
    scored = [(f, float(c)) for f, c in enumerate(confidence) if c is not None]
    ordered = [FrameConfidence(f, c) for f, c in sorted(scored, key=lambda fc: (fc[1], fc[0]))]
    server_order = result.get("review_first")
    if server_order is not None and sorted(int(f) for f in server_order) != [f for f, _ in scored]:
        raise ValueError(
            f"the reply's review_first {server_order!r} does not list the frames it gave a confidence for"
        )
    return ordered


# -------------------------------------------------------------------- the tools' markups

#: Interaction tools: the name of the markups node each places its points in, and the points'
#: colour (RGB, 0-1).
PROMPT_TOOLS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "positive": ("SonoVLM positive points", (0.2, 0.9, 0.3)),
    "negative": ("SonoVLM negative points", (0.95, 0.25, 0.2)),
    "box": ("SonoVLM box corners", (1.0, 0.8, 0.1)),
}

#: Singleton tag of the interaction and selection nodes Slicer's application logic adds to the
#: scene (the nodes ``slicer.app.applicationLogic().GetInteractionNode()`` and
#: ``GetSelectionNode()`` return).
APPLICATION_SINGLETON_TAG = "Singleton"


class PromptMarkups:
    """The markups fiducial nodes the interaction tools place their clicks in, and Slicer's place
    mode for them: the scene work of the panel's positive, negative and box tools.

    One node per tool of :data:`PROMPT_TOOLS`, made on first use (and again after the user
    deleted it). Positions are RAS millimetres in the scene; the session's
    :class:`Prompts` hold ``[i, j, k]`` voxel indices of the case's frame.

    Args:
        scene: the ``vtkMRMLScene`` (Slicer's application logic has added its interaction and
            selection singletons to it, as in the application).
    """

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.nodes: dict[str, Any] = {}

    def node(self, tool: str) -> Any:
        """The ``vtkMRMLMarkupsFiducialNode`` of ``tool`` (``positive``, ``negative``, ``box``),
        named and coloured per :data:`PROMPT_TOOLS`, point labels hidden; made when missing."""
        if tool not in PROMPT_TOOLS:
            raise ValueError(f"unknown interaction tool {tool!r} (known: {', '.join(PROMPT_TOOLS)})")
        node = self.nodes.get(tool)
        if node is None or self.scene.GetNodeByID(node.GetID()) is None:
            name, colour = PROMPT_TOOLS[tool]
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*colour)
            node.GetDisplayNode().SetPointLabelsVisibility(False)
            self.nodes[tool] = node
        return node

    def tool_of(self, node: Any) -> str | None:
        """The tool whose node ``node`` is, ``None`` for any other node."""
        return next((tool for tool, tool_node in self.nodes.items() if tool_node is node), None)

    def placed(self, node: Any) -> tuple[str | None, list[tuple[float, float, float]]]:
        """``(tool, points)``: the tool of ``node`` and its defined points, RAS in mm, in
        placement order; ``(None, [])`` for a node that is no tool's."""
        tool = self.tool_of(node)
        return tool, (control_points_ras(node) if tool is not None else [])

    def show(self, volume: Any, prompts: Prompts) -> None:
        """Replace the tools' points with ``prompts``: its foreground and background ``[i, j, k]``
        voxel clicks (i = column, j = row; k is ignored: the points lie on the slice of
        ``volume``, a one-slice volume showing the frame) placed at their RAS positions (mm)
        through ``volume``'s IJK-to-RAS; the box corners are cleared."""
        from .geometry import pixel_points_to_ras, volume_ijk_to_ras

        ijk_to_ras = volume_ijk_to_ras(volume)
        for tool, points in (("positive", prompts.foreground), ("negative", prompts.background), ("box", [])):
            node = self.node(tool)
            node.RemoveAllControlPoints()
            if points:
                for ras in pixel_points_to_ras(ijk_to_ras, [(i, j) for i, j, _ in points]):
                    node.AddControlPoint(*ras)

    def start_placing(self, tool: str) -> Any:
        """Put Slicer in persistent place mode with ``tool``'s node as the active place node (each
        click in a view adds a point to it); returns the node."""
        node = self.node(tool)
        selection = self._application_node("vtkMRMLSelectionNode")
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = self._application_node("vtkMRMLInteractionNode")
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(interaction.Place)
        return node

    def stop_placing(self) -> None:
        """Back to Slicer's view-transform mode (clicks in the views place nothing)."""
        self._application_node("vtkMRMLInteractionNode").SwitchToViewTransformMode()

    def forget(self) -> None:
        """Drop the nodes (the scene was closed: node ids start again)."""
        self.nodes = {}

    def _application_node(self, class_name: str) -> Any:
        node = self.scene.GetSingletonNode(APPLICATION_SINGLETON_TAG, class_name)
        if node is None:
            raise RuntimeError(
                f"the scene has no {class_name} singleton (Slicer's application logic adds it): "
                "cannot place points"
            )
        return node
