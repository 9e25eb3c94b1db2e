"""The scene and geometry work the panel used to do itself, now in the logic (issue 16 item 5):
the interaction tools' markups nodes and Slicer's place mode (``PromptMarkups``), the clicks shown
back at their RAS positions, the Segment Editor's parameter node, the measurements of the segment
shown, the live layers of the slice views, and ``SonoVLMLogic``'s methods the widget calls, all
against Slicer's own MRML core (slicer-core), no Qt and no server (a stand-in client answers)."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
from slicer_extension_helpers import asymmetric_lesion

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import slicer  # noqa: E402
import slicer.util  # noqa: E402
import vtk  # noqa: E402
from SonoVLMLib import live  # noqa: E402
from SonoVLMLib.geometry import pixel_points_to_ras, volume_ijk_to_ras  # noqa: E402
from SonoVLMLib.interaction import (  # noqa: E402
    PROMPT_TOOLS,
    PromptMarkups,
    Prompts,
    control_points_ras,
    ras_to_ijk_matrix,
    ras_to_voxels,
)
from SonoVLMLib.scene import SEGMENT_EDITOR_SINGLETON_TAG, UltrasoundSceneLogic  # noqa: E402
from SonoVLMLib.workflow import AnnotationSession  # noqa: E402

ROWS, COLS = 48, 64
ORGAN = "lymph_node"


def oblique_volume(scene, name="oblique"):
    """A one-slice volume with non-identity spacing, origin and flipped axes (as a user's may be)."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, np.zeros((1, ROWS, COLS), np.uint8))
    volume.SetSpacing(0.3, 0.7, 1.0)
    volume.SetOrigin(12.5, -40.0, 3.0)
    directions = vtk.vtkMatrix4x4()
    directions.SetElement(0, 0, -1.0)
    directions.SetElement(1, 1, -1.0)
    volume.SetIJKToRASDirectionMatrix(directions)
    return volume


def write_png_mask(path, mask):
    from PIL import Image

    Image.fromarray((np.asarray(mask) != 0).astype(np.uint8)).save(path)
    return str(path)


class StandInClient:
    """Answers ``segment`` and ``interactive`` with a fixed mask, as the server's client does
    (a mask file and the reply's JSON); records the interactive requests."""

    server_url = "http://stand-in"

    def __init__(self, folder, mask):
        self.folder = folder
        self.mask = mask
        self.requests = []

    def _reply(self, organ):
        path = write_png_mask(self.folder / f"mask-{len(self.requests)}.png", self.mask)
        return path, {"organ": ORGAN if organ == "auto" else organ, "confidence": 0.9}

    def segment(self, image_id, organ, prompt=None, frame=None):
        self.requests.append(("segment", image_id, organ))
        return self._reply(organ)

    def interactive(self, image_id, previous_mask, organ, prompt, **prompts):
        self.requests.append(("interactive", image_id, prompts))
        return self._reply(organ)


@pytest.fixture
def scene_logic(slicer_scene):
    return UltrasoundSceneLogic(slicer_scene)


@pytest.fixture
def session(scene_logic, tmp_path):
    client = StandInClient(tmp_path, asymmetric_lesion(ROWS, COLS))
    return AnnotationSession(client, scene_logic, str(tmp_path / "work"))


@pytest.fixture
def case(scene_logic):
    frames = np.random.default_rng(0).integers(0, 255, (1, ROWS, COLS), dtype=np.uint8)
    return scene_logic.case_from_frames(frames, (0.2, 0.25), "us-case", image_id="us-case")


def line_nodes(scene):
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsLineNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


# ---------------------------------------------------------------- the tools' markups nodes


def test_each_tool_has_one_named_coloured_node_made_on_first_use(slicer_scene):
    markups = PromptMarkups(slicer_scene)
    for tool, (name, colour) in PROMPT_TOOLS.items():
        node = markups.node(tool)
        assert node.IsA("vtkMRMLMarkupsFiducialNode") and node.GetName() == name
        assert node.GetScene() is slicer_scene
        assert node.GetDisplayNode().GetSelectedColor() == pytest.approx(colour)
        assert not node.GetDisplayNode().GetPointLabelsVisibility()
        assert markups.node(tool) is node  # made once
    assert slicer_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == len(PROMPT_TOOLS)


def test_a_tool_node_the_user_deleted_is_made_again(slicer_scene):
    markups = PromptMarkups(slicer_scene)
    first = markups.node("positive")
    slicer_scene.RemoveNode(first)
    again = markups.node("positive")
    assert again is not first and again.GetScene() is slicer_scene
    assert markups.tool_of(again) == "positive" and markups.tool_of(first) is None


def test_an_unknown_tool_is_refused_by_name(slicer_scene):
    with pytest.raises(ValueError, match="unknown interaction tool 'lasso'"):
        PromptMarkups(slicer_scene).node("lasso")


def test_placed_points_are_the_tools_defined_points_in_ras(slicer_scene):
    markups = PromptMarkups(slicer_scene)
    node = markups.node("negative")
    node.AddControlPoint(1.0, 2.0, 3.0)
    node.AddControlPoint(-4.5, 0.25, 3.0)
    assert markups.placed(node) == ("negative", [(1.0, 2.0, 3.0), (-4.5, 0.25, 3.0)])
    other = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "a user's points")
    other.AddControlPoint(0.0, 0.0, 0.0)
    assert markups.placed(other) == (None, [])


def test_clicks_are_shown_at_their_voxels_ras_and_read_back_as_the_same_voxels(slicer_scene):
    volume = oblique_volume(slicer_scene)
    markups = PromptMarkups(slicer_scene)
    markups.node("box").AddControlPoint(9.0, 9.0, 9.0)  # an earlier box: cleared
    markups.node("positive").AddControlPoint(9.0, 9.0, 9.0)  # earlier clicks: replaced
    prompts = Prompts(frame=0, foreground=[[10, 5, 0], [63, 47, 0]], background=[[0, 0, 0]])
    markups.show(volume, prompts)

    ijk_to_ras = volume_ijk_to_ras(volume)
    positive = control_points_ras(markups.node("positive"))
    np.testing.assert_allclose(positive, pixel_points_to_ras(ijk_to_ras, [(10, 5), (63, 47)]), atol=1e-9)
    assert positive[0] == pytest.approx((12.5 - 10 * 0.3, -40.0 - 5 * 0.7, 3.0))  # x, y mm from the origin
    negative = control_points_ras(markups.node("negative"))
    np.testing.assert_allclose(negative, [(12.5, -40.0, 3.0)], atol=1e-9)
    assert markups.node("box").GetNumberOfControlPoints() == 0
    # What the panel shows is what the session sends back when the points are read again.
    ras_to_ijk = ras_to_ijk_matrix(volume)
    assert ras_to_voxels(ras_to_ijk, positive) == prompts.foreground
    assert ras_to_voxels(ras_to_ijk, negative) == prompts.background

    markups.show(volume, Prompts(frame=0))  # no clicks: every tool empty
    assert all(markups.node(tool).GetNumberOfControlPoints() == 0 for tool in PROMPT_TOOLS)


def test_a_cine_frames_clicks_lie_on_the_slice_shown(slicer_scene, scene_logic):
    frames = np.zeros((3, ROWS, COLS), np.uint8)
    cine = scene_logic.case_from_frames(frames, (0.5, 0.4), "cine")
    markups = PromptMarkups(slicer_scene)
    markups.show(cine.volume, Prompts(frame=2, foreground=[[4, 6, 2]]))
    (point,) = control_points_ras(markups.node("positive"))
    assert point == pytest.approx((-4 * 0.4, -6 * 0.5, 0.0))  # k is the frame, not a slice offset


def test_place_mode_puts_the_tools_node_in_slicers_selection_and_interaction_nodes(slicer_scene):
    markups = PromptMarkups(slicer_scene)
    node = markups.start_placing("box")
    selection = slicer_scene.GetSingletonNode("Singleton", "vtkMRMLSelectionNode")
    interaction = slicer_scene.GetSingletonNode("Singleton", "vtkMRMLInteractionNode")
    assert node is markups.node("box")
    assert selection.GetActivePlaceNodeID() == node.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert interaction.GetPlaceModePersistence() == 1
    markups.stop_placing()
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform


def test_place_mode_without_slicers_application_nodes_says_what_is_missing():
    bare = slicer.vtkMRMLScene()
    markups = PromptMarkups(bare)
    with pytest.raises(RuntimeError, match="no vtkMRMLSelectionNode singleton"):
        markups.start_placing("positive")
    with pytest.raises(RuntimeError, match="no vtkMRMLInteractionNode singleton"):
        markups.stop_placing()


def test_forget_drops_the_nodes_after_close_scene(slicer_scene):
    markups = PromptMarkups(slicer_scene)
    node = markups.node("positive")
    slicer_scene.Clear(0)
    markups.forget()
    assert markups.nodes == {} and markups.tool_of(node) is None
    assert markups.node("positive") is not node


# ---------------------------------------------------------------- the Segment Editor's node


def test_the_segment_editor_node_is_the_segment_editor_modules_singleton(slicer_scene, scene_logic):
    node = scene_logic.segment_editor_node()
    assert node.IsA("vtkMRMLSegmentEditorNode") and node.GetScene() is slicer_scene
    assert node.GetSingletonTag() == SEGMENT_EDITOR_SINGLETON_TAG == "SegmentEditor"
    assert scene_logic.segment_editor_node() is node
    assert slicer_scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode") == 1


def test_the_segment_editor_modules_own_node_is_reused(slicer_scene, scene_logic):
    existing = slicer_scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
    existing.UnRegister(None)
    existing.SetSingletonTag("SegmentEditor")
    existing = slicer_scene.AddNode(existing)
    assert scene_logic.segment_editor_node() is existing


def test_a_scene_without_the_segmentations_logic_cannot_make_the_editor_node():
    with pytest.raises(RuntimeError, match="vtkMRMLSegmentEditorNode"):
        UltrasoundSceneLogic(slicer.vtkMRMLScene()).segment_editor_node()


# ---------------------------------------------------------------- measurements of the segment shown


def test_the_segment_shown_is_measured_and_its_axes_drawn(slicer_scene, session, case):
    outcome = session.auto_segment(case, "auto")
    expected = session.update_measurements(case, outcome.segment_id)
    for segment_id in (outcome.segment_id, None, "", "not-a-segment"):
        measurement = session.measure_shown(case, segment_id)  # else: the organ's segment
        assert measurement.physical.long_axis == pytest.approx(expected.physical.long_axis)
        assert measurement.physical.area == pytest.approx(expected.physical.area)
        assert len(line_nodes(slicer_scene)) == 2


def test_a_users_own_segment_is_measured_when_picked(slicer_scene, session, case):
    session.auto_segment(case, "auto")
    user_segment = case.segmentation.GetSegmentation().AddEmptySegment("mine", "mine")
    assert session.measure_shown(case, user_segment) is None  # picked and empty: no measurement
    assert line_nodes(slicer_scene) == []


def test_without_a_segment_the_axes_go(slicer_scene, session, case, scene_logic):
    assert session.measure_shown(case, None) is None  # never segmented
    outcome = session.auto_segment(case, "auto")
    assert len(line_nodes(slicer_scene)) == 2
    scene_logic.remove_segment(case, outcome.segment_id)  # the user deleted it
    assert session.measure_shown(case, outcome.segment_id) is None
    assert line_nodes(slicer_scene) == []


# ---------------------------------------------------------------- the live layers


def live_volume(scene, class_name, name):
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.zeros((1, ROWS, COLS), np.uint8))
    return node


def test_a_labelmap_is_the_label_layer_a_grey_label_is_blended_over_the_image(slicer_scene):
    image = live_volume(slicer_scene, "vtkMRMLScalarVolumeNode", live.IMAGE_DEVICE)
    labelmap = live_volume(slicer_scene, "vtkMRMLLabelMapVolumeNode", live.LABEL_DEVICE)
    monitor = live.LiveMonitor(slicer_scene, image, labelmap)
    assert live.LiveLogic.view_layers(monitor) is None  # not started
    monitor.start()
    assert live.LiveLogic.view_layers(monitor) == {
        "background": image,
        "foreground": None,
        "label": labelmap,
        "fit": True,
        "rotateToVolumePlane": True,
    }
    monitor.stop()

    grey = live_volume(slicer_scene, "vtkMRMLScalarVolumeNode", "grey label")
    monitor = live.LiveMonitor(slicer_scene, image, grey)
    monitor.start()
    assert live.LiveLogic.view_layers(monitor) == {
        "background": image,
        "foreground": grey,
        "foregroundOpacity": 0.4,
        "label": None,
        "fit": True,
        "rotateToVolumePlane": True,
    }
    monitor.stop()


def test_no_layers_before_the_image_and_the_labels_pixels_arrive(slicer_scene, scene_logic):
    logic = live.LiveLogic(scene_logic)
    label = logic.ensure_label_node()  # made at Start: no pixels yet
    monitor = logic.monitor()
    monitor.start()
    assert monitor.label_node is label and monitor.image_node is None
    assert logic.view_layers(monitor) is None
    live_volume(slicer_scene, "vtkMRMLScalarVolumeNode", live.IMAGE_DEVICE)
    assert monitor.image_node is not None and logic.view_layers(monitor) is None  # label empty
    slicer.util.updateVolumeFromArray(label, np.zeros((1, ROWS, COLS), np.uint8))
    assert logic.view_layers(monitor)["label"] is label
    monitor.stop()


# ---------------------------------------------------------------- SonoVLMLogic, as the widget calls it


@pytest.fixture
def sonovlm_module(monkeypatch, slicer_scene, tmp_path):
    """SonoVLM.py as Slicer loads it (test_module_in_slicer.py's stand-in base classes)."""
    from test_module_in_slicer import MODULE_FILE, slicer_base_classes

    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slicer_base_classes())
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setattr(slicer, "mrmlScene", slicer_scene, raising=False)
    temp = tmp_path / "slicer-temp"
    monkeypatch.setattr(slicer.util, "tempDirectory", lambda key="__SlicerTemp__", **kw: str(temp / key))
    spec = importlib.util.spec_from_file_location("SonoVLM_widget_logic_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_click_comes_back_at_the_voxel_the_session_sent(sonovlm_module, slicer_scene, tmp_path):
    """The panel's click -> session -> markups round trip without Qt: the point placed in RAS is
    sent as a voxel, and ``show_prompts`` draws that voxel's centre back in the tool's node."""
    logic = sonovlm_module.SonoVLMLogic()
    with pytest.raises(RuntimeError, match="connect first"):
        logic.show_prompts(None)
    client = StandInClient(tmp_path, asymmetric_lesion(ROWS, COLS))
    logic.session = AnnotationSession(client, logic.scene_logic, str(tmp_path / "work"))
    case = logic.scene_logic.case_from_volume(oblique_volume(slicer_scene), image_id="us-oblique")

    node = logic.prompt_markups.start_placing("positive")
    clicked = pixel_points_to_ras(volume_ijk_to_ras(case.volume), [(20.3, 11.8)])[0]
    node.AddControlPoint(*clicked)  # what a click in the Red view does
    tool, points = logic.prompt_markups.placed(node)
    assert tool == "positive"
    logic.session.add_click(case, True, points[-1], "auto")
    assert client.requests[-1][2]["foreground"] == [[20, 12, 0]]

    logic.show_prompts(case)
    (shown,) = control_points_ras(logic.prompt_markups.node("positive"))
    assert shown == pytest.approx(tuple(pixel_points_to_ras(volume_ijk_to_ras(case.volume), [(20, 12)])[0]))
    assert logic.prompt_markups.node("negative").GetNumberOfControlPoints() == 0


def test_the_logic_holds_the_nodes_the_widget_used_to_make(sonovlm_module, slicer_scene, scene_logic):
    logic = sonovlm_module.SonoVLMLogic()
    assert logic.prompt_markups.scene is slicer_scene
    editor = logic.segment_editor_node()
    assert editor.GetSingletonTag() == "SegmentEditor" and logic.segment_editor_node() is editor

    cine = logic.scene_logic.case_from_frames(np.zeros((4, ROWS, COLS), np.uint8), None, "cine")
    logic.select_frame(cine, 3)
    assert cine.current_frame() == 3
    with pytest.raises(ValueError, match="frame 4 is out of range"):
        logic.select_frame(cine, 4)

    positive = logic.prompt_markups.node("positive")
    slicer_scene.Clear(0)
    logic.close_scene()  # without a session too
    assert logic.prompt_markups.tool_of(positive) is None


# ---------------------------------------------------------------- the widget's wiring, without Qt


class FakeButton:
    def __init__(self):
        self.checked = False
        self.enabled = True

    def blockSignals(self, block):
        pass


class FakeEditor:
    def __init__(self):
        self.segment_id = ""
        self.effect = "Paint"

    def currentSegmentID(self):
        return self.segment_id

    def setActiveEffect(self, effect):
        self.effect = effect


class FakeTable:
    def __init__(self):
        self.rows = {}
        self.count = None

    def setRowCount(self, count):
        self.count = count
        self.rows = {}

    def setItem(self, row, column, item):
        self.rows[(row, column)] = item


@pytest.fixture
def widget(sonovlm_module, slicer_scene, tmp_path, monkeypatch):
    """A ``SonoVLMWidget`` with its logic and a session with a stand-in client; the panel's Qt
    widgets are stand-ins (only what the methods under test touch)."""
    sys.modules["qt"].QTableWidgetItem = str  # the stub "qt" module of the fixture
    widget = sonovlm_module.SonoVLMWidget()
    widget.logic = sonovlm_module.SonoVLMLogic()
    client = StandInClient(tmp_path, asymmetric_lesion(ROWS, COLS))
    widget.logic.session = AnnotationSession(client, widget.logic.scene_logic, str(tmp_path / "work"))
    widget.ui = types.SimpleNamespace(
        positivePointButton=FakeButton(),
        negativePointButton=FakeButton(),
        boxButton=FakeButton(),
        segmentEditorWidget=FakeEditor(),
        measurementsTable=FakeTable(),
    )
    yield widget
    widget.removeObservers()


def test_the_widget_observes_each_tool_node_once_and_ignores_its_own_points(widget, slicer_scene):
    node = widget._toolNode("positive")
    assert widget._toolNode("positive") is node is widget.logic.prompt_markups.node("positive")
    assert widget.hasObserver(node, node.PointPositionDefinedEvent, widget.onPointPlaced)
    case = widget.logic.scene_logic.case_from_volume(oblique_volume(slicer_scene), image_id="us-oblique")
    widget.case = case
    clicked = pixel_points_to_ras(volume_ijk_to_ras(case.volume), [(30, 20)])[0]
    widget.session.add_click(case, False, clicked, "auto")
    scheduled = []
    sys.modules["qt"].QTimer = types.SimpleNamespace(singleShot=lambda ms, call: scheduled.append(call))
    widget._showPrompts()  # its own points are not clicks: nothing is sent
    assert [len(control_points_ras(widget.logic.prompt_markups.node(t))) for t in PROMPT_TOOLS] == [0, 1, 0]
    assert scheduled == []
    node.AddControlPoint(*clicked)  # a click in a view: the request is scheduled
    assert len(scheduled) == 1
    for tool in PROMPT_TOOLS:
        tool_node = widget.logic.prompt_markups.node(tool)
        assert widget.hasObserver(tool_node, tool_node.PointPositionDefinedEvent, widget.onPointPlaced)


def test_a_tool_button_starts_and_stops_slicers_place_mode(widget, slicer_scene):
    interaction = slicer_scene.GetSingletonNode("Singleton", "vtkMRMLInteractionNode")
    widget.onTool("box", True)
    assert widget.activeTool == "box" and widget.ui.segmentEditorWidget.effect is None
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    selection = slicer_scene.GetSingletonNode("Singleton", "vtkMRMLSelectionNode")
    assert selection.GetActivePlaceNodeID() == widget.logic.prompt_markups.node("box").GetID()
    widget.onTool("box", False)
    assert widget.activeTool is None
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform


def test_the_widget_shows_the_measurements_of_the_segment_shown(widget, slicer_scene):
    frames = np.zeros((1, ROWS, COLS), np.uint8)
    widget.case = widget.logic.scene_logic.case_from_frames(frames, (0.2, 0.25), "us", image_id="us")
    widget.updateMeasurements()  # nothing segmented yet
    assert widget.ui.measurementsTable.count == 0 and line_nodes(slicer_scene) == []
    outcome = widget.session.auto_segment(widget.case, "auto")
    widget.updateMeasurements()
    rows = outcome.measurement.table_rows()
    assert widget.ui.measurementsTable.count == len(rows) > 0
    assert widget.ui.measurementsTable.rows[(0, 1)] == rows[0][1]
    assert len(line_nodes(slicer_scene)) == 2


def test_the_widget_lays_the_live_layers_out_once(widget, slicer_scene, monkeypatch):
    calls = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **layers: calls.append(layers))
    image = live_volume(slicer_scene, "vtkMRMLScalarVolumeNode", live.IMAGE_DEVICE)
    labelmap = live_volume(slicer_scene, "vtkMRMLLabelMapVolumeNode", live.LABEL_DEVICE)
    monitor = widget.logic.live.monitor()
    monitor.start()
    widget._showLiveLayers(monitor)
    widget._showLiveLayers(monitor)
    monitor.stop()
    assert calls == [
        {"background": image, "foreground": None, "label": labelmap, "fit": True, "rotateToVolumePlane": True}
    ]
