"""Where an ultrasound frame's pixels lie in Slicer's world (RAS) coordinates.

A 2D image is a one-slice volume. Its voxel ``(i, j, k)`` is pixel column ``i`` = x, row ``j`` =
y, frame slice ``k`` = 0, with voxel centres at integers (the convention of ``sonovlm.measure``
too). Slicer's file readers place 2D images with LPS identity directions, i.e. IJK-to-RAS
``diag(-col_mm, -row_mm, 1)``: the image then appears upright in the Red (axial) view, columns
left to right, rows top to bottom. The extension uses the same placement, so that images it
builds and images Slicer loads line up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ultrasound_ijk_to_ras(spacing_mm: Sequence[float] | None) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a frame with ``(row_mm, col_mm)`` spacing (1 mm if None)."""
    row_mm, col_mm = (1.0, 1.0) if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
    return np.diag([-col_mm, -row_mm, 1.0, 1.0])


def pixel_points_to_ras(
    ijk_to_ras: np.ndarray, points_xy: Sequence[Sequence[float]], k: float = 0.0
) -> np.ndarray:
    """RAS positions ``(n, 3)`` of ``(x, y)`` pixel points (x = column, y = row) on slice ``k``."""
    points = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    ijk1 = np.column_stack([points, np.full(len(points), float(k)), np.ones(len(points))])
    return (np.asarray(ijk_to_ras, dtype=float) @ ijk1.T).T[:, :3]


def matrix_to_array(vtk_matrix) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 NumPy array."""
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_to_matrix(array: np.ndarray):
    """A 4x4 NumPy array as a ``vtkMatrix4x4``."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    """IJK-to-RAS of a volume node as a 4x4 array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)

