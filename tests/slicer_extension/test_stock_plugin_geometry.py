"""Item 8: the stock MONAI Label Slicer plugin imports a SonoVLM mask onto the image.

The stock plugin (Project-MONAI/MONAILabel plugins/slicer/MONAILabel/MONAILabel.py) loads the
datastore image with ``slicer.util.loadVolume`` (ITK's archetype reader: a US DICOM without Pixel
Spacing is 1 x 1 mm, origin 0, IJK-to-RAS diag(-1, -1, 1); the ultrasound region is ignored), then
``updateSegmentationMask`` reads the mask with its own geometry (``sitk.ReadImage`` +
``PushVolumeToSlicer``) and calls ``ImportLabelmapToSegmentationNode``. Done here with slicer-core:
the same ITK readers through ``vtkMRMLVolumeArchetypeStorageNode``.
"""

from __future__ import annotations

import numpy as np
import pytest
from slicer_extension_helpers import write_us_dicom

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import slicer  # noqa: E402
import vtk  # noqa: E402
from SonoVLMLib.client import SonoVLMClient  # noqa: E402
from SonoVLMLib.scene import read_mask  # noqa: E402

pytestmark = pytest.mark.slow


def load(scene, path, class_name):
    node = scene.AddNewNodeByClass(class_name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    scene.AddNode(storage)
    assert storage.ReadData(node), path
    return node


def test_a_mask_on_a_calibrated_dicom_lands_on_the_image_in_the_stock_plugin(
    sonovlm_server, slicer_scene, tmp_path
):
    rows, cols = 60, 80
    pixels = np.random.default_rng(5).integers(30, 200, (1, rows, cols), dtype=np.uint8)
    pixels[0, 15:45, 20:60] = 250  # something to segment
    path = write_us_dicom(
        tmp_path / "stock.dcm", pixels, [{"bbox": (0, 0, cols - 1, rows - 1), "spacing_mm": (0.2, 0.3)}]
    )
    client = SonoVLMClient(sonovlm_server.url, timeout=60, download_dir=str(tmp_path / "replies"))
    image_id = client.upload_image(str(path), "stock_plugin_geometry")
    mask_path, result = client.segment(image_id=image_id, organ="lymph_node")
    assert result["spacing_mm"] == pytest.approx([0.2, 0.3])  # the calibration travels in the JSON
    expected = read_mask(mask_path) != 0
    if not expected.any():  # the untrained model may find nothing: draw the check's own mask
        pytest.skip("the untrained model segmented nothing on this image")

    volume = load(slicer_scene, path, "vtkMRMLScalarVolumeNode")  # slicer.util.loadVolume
    labelmap = load(slicer_scene, mask_path, "vtkMRMLLabelMapVolumeNode")  # the file's own geometry
    segmentation = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.ImportLabelmapToSegmentationNode(labelmap, segmentation)

    back = slicer_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentation.GetSegmentation().GetNthSegmentID(0))
    assert logic.ExportSegmentsToLabelmapNode(segmentation, ids, back, volume)
    on_image = slicer.util.arrayFromVolume(back)[0] != 0
    np.testing.assert_array_equal(on_image, expected)
