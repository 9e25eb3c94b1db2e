"""SonoVLM: one-click lesion segmentation and classification of 2D ultrasound in 3D Slicer,
against a SonoVLM MONAI Label server. Research use only.

The work is done by Qt-free code in ``SonoVLMLib`` (tested outside Slicer with slicer-core):
``SonoVLMLogic`` is its :class:`~SonoVLMLib.workflow.AnnotationSession`; the widget below only
wires the panel's buttons to it and shows what it returns.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import traceback

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from SonoVLMLib.client import SonoVLMClient, SonoVLMClientError
from SonoVLMLib.geometry import pixel_points_to_ras, volume_ijk_to_ras
from SonoVLMLib.interaction import control_points_ras
from SonoVLMLib.organs import ORGAN_LABELS, segment_name
from SonoVLMLib.replies import organ_label_text
from SonoVLMLib.scene import UltrasoundSceneLogic
from SonoVLMLib.workflow import AnnotationSession

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
SERVER_URL_SETTING = "SonoVLM/serverUrl"
TOKEN_SETTING = "SonoVLM/token"
CLIENT_ID_SETTING = "SonoVLM/clientId"
AUTO_SEGMENT_SHORTCUT = "Ctrl+Shift+A"
TRAINING_POLL_MS = 3000

#: Interaction tools: markups node name and colour of their points.
PROMPT_TOOLS = {
    "positive": ("SonoVLM positive points", (0.2, 0.9, 0.3)),
    "negative": ("SonoVLM negative points", (0.95, 0.25, 0.2)),
    "box": ("SonoVLM box corners", (1.0, 0.8, 0.1)),
}


class SonoVLM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SonoVLM"
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = ["Segmentations", "Sequences", "Markups"]
        self.parent.contributors = ["SonoVLM contributors"]
        self.parent.helpText = (
            "Auto-segment lymph nodes, breast lesions and thyroid nodules on 2D ultrasound with one click, "
            "classify them benign or malignant, measure them in millimetres, correct and submit, and let the "
            "SonoVLM MONAI Label server retrain on what was annotated. <b>Research use only.</b> "
            "See the extension's README for the workflow."
        )
        self.parent.acknowledgementText = (
            "Builds on MONAI Label and on the method of Qu et al., 'Adapting Vision-Language Foundation "
            "Model for Next Generation Medical Ultrasound Image Analysis' (2025)."
        )


class SonoVLMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: each button calls one :class:`SonoVLMLogic` method inside :meth:`_busy`."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.case = None
        self.segment_id = None
        self.shortcut = None
        self.toolNodes = {}
        self.activeTool = None
        self._syncingPrompts = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/SonoVLM.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)

        self.ui.serverUrlLineEdit.text = slicer.util.settingsValue(SERVER_URL_SETTING, DEFAULT_SERVER_URL)
        self.ui.measurementsTable.horizontalHeader().setStretchLastSection(True)
        self.ui.measurementsTable.verticalHeader().setVisible(False)
        self._fillOrgans(list(ORGAN_LABELS))

        editor = self.ui.segmentEditorWidget
        editor.setMRMLSegmentEditorNode(self._segmentEditorNode())
        editor.setSegmentationNodeSelectorVisible(False)
        editor.setSourceVolumeNodeSelectorVisible(False)

        self.ui.connectButton.connect("clicked()", self.onConnect)
        self.ui.nextSampleButton.connect("clicked()", self.onNextSample)
        self.ui.useVolumeButton.connect("clicked()", self.onUseVolume)
        self.ui.autoSegmentButton.connect("clicked()", self.onAutoSegment)
        self.ui.classifyButton.connect("clicked()", self.onClassify)
        self.ui.submitButton.connect("clicked()", self.onSubmit)
        self.ui.trainButton.connect("clicked()", self.onTrain)
        self.ui.stopTrainingButton.connect("clicked()", self.onStopTraining)
        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        for tool, button in self._toolButtons().items():
            button.connect("toggled(bool)", lambda on, tool=tool: self.onTool(tool, on))
        self.ui.undoInteractionButton.connect("clicked()", self.onUndo)
        self.ui.propagateButton.connect("clicked()", self.onPropagate)
        self.ui.frameConfidenceList.connect("itemClicked(QListWidgetItem*)", self.onFrameClicked)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.InteractionModeChangedEvent, self.onInteractionModeChanged)

        self.shortcut = qt.QShortcut(qt.QKeySequence(AUTO_SEGMENT_SHORTCUT), slicer.util.mainWindow())
        self.shortcut.connect("activated()", self.onAutoSegment)

        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(TRAINING_POLL_MS)
        self.trainingTimer.connect("timeout()", self.onTrainingTimer)
        self.measureTimer = qt.QTimer()  # debounces measurement updates while the user paints
        self.measureTimer.setSingleShot(True)
        self.measureTimer.setInterval(300)
        self.measureTimer.connect("timeout()", self.updateMeasurements)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)
        self._updateButtons()

    def cleanup(self):
        self.removeObservers()
        self.trainingTimer.stop()
        self.measureTimer.stop()
        if self.shortcut is not None:
            self.shortcut.disconnect("activated()")
            self.shortcut.setParent(None)
            self.shortcut = None

    # ---------------------------------------------------------------- actions

    def onConnect(self):
        url = self.ui.serverUrlLineEdit.text.strip() or DEFAULT_SERVER_URL
        qt.QSettings().setValue(SERVER_URL_SETTING, url)
        with self._busy("Connecting"):
            logic = SonoVLMLogic(
                url,
                token=slicer.util.settingsValue(TOKEN_SETTING, "") or None,
                client_id=slicer.util.settingsValue(CLIENT_ID_SETTING, "") or getpass.getuser(),
            )
            if logic.client.auth_enabled() and not logic.client.token:
                self._login(logic.client)
            summary = logic.connect()
            self.logic = logic
            self._fillCombo(self.ui.strategyComboBox, summary.strategies)
            self._fillCombo(self.ui.trainModelComboBox, summary.trainers)
            self._fillOrgans(summary.organs)
            self.ui.serverInfoLabel.text = summary.text()
            self._setStatus(f"Connected to {url}")
        if self.logic is not None:
            self.onTrainingTimer()

    def onNextSample(self, confirm=True):
        if self.logic is None:
            return
        if (
            confirm
            and self.case is not None
            and not slicer.util.confirmOkCancelDisplay(
                "Load the next case? Work on the current one that was not submitted is dropped."
            )
        ):
            return
        with self._busy("Loading the next case"):
            case = self.logic.next_case(self.ui.strategyComboBox.currentText)
            if case is None:
                self._setStatus("The server has no unlabelled image left.")
                return
            self._showCase(case)

    def onUseVolume(self):
        volume = self.ui.volumeSelector.currentNode()
        if self.logic is None or volume is None:
            return
        with self._busy(f"Uploading {volume.GetName()}"):
            self._showCase(self.logic.open_volume(volume))

    def onAutoSegment(self):
        if self.logic is None or self.case is None or not self.ui.autoSegmentButton.enabled:
            return
        organ = self.ui.organComboBox.currentData
        with self._busy("Auto-segmenting"):
            outcome = self.logic.auto_segment(self.case, organ, self.ui.promptLineEdit.text.strip() or None)
            self.segment_id = outcome.segment_id
            self.ui.segmentEditorWidget.setCurrentSegmentID(outcome.segment_id)
            self._showMeasurements(outcome.measurement)
            confidence = outcome.result.get("confidence")
            details = f", confidence {float(confidence):.2f}" if confidence is not None else ""
            version = outcome.result.get("model_version")
            details += f", model {version}" if version else ""
            self._setStatus(
                f"{segment_name(outcome.organ)} segmented{details}. Correct it with the editor, then submit."
            )

    def onClassify(self):
        if self.logic is None or self.case is None:
            return
        with self._busy("Classifying"):
            summary = self.logic.classify(self.case, self.ui.organComboBox.currentData)
            self.ui.classificationLabel.text = summary.text()
            label, score = summary.probabilities[0]
            self._setStatus(f"Classified: {label} ({score * 100:.0f} %)")

    def onSubmit(self):
        segment_id = self.ui.segmentEditorWidget.currentSegmentID() or self.segment_id
        if self.logic is None or self.case is None or not segment_id:
            return
        submitted = False
        with self._busy("Submitting the label"):
            self.logic.submit(self.case, segment_id, self.ui.pathologyComboBox.currentText)
            submitted = True
            self._setStatus(f"Label of {self.case.image_id} saved ({self.logic.submissions} this session).")
        if not submitted:
            return
        if self.logic.retrain_due(self.ui.retrainEverySpinBox.value):
            self.onTrain()
        if self.ui.autoNextCheckBox.checked:
            self.onNextSample(confirm=False)

    def onTrain(self):
        model = self.ui.trainModelComboBox.currentText
        if self.logic is None or not model:
            return
        with self._busy(f"Starting training of {model}"):
            self.logic.start_training(model)
            self._setStatus(f"Training of {model} started on the server.")
            self.trainingTimer.start()
        self.onTrainingTimer()

    def onStopTraining(self):
        if self.logic is None or not slicer.util.confirmOkCancelDisplay("Stop the running training?"):
            return
        with self._busy("Stopping training"):
            self.logic.stop_training()
            self._setStatus("Training stopped; the served model is unchanged.")
        self.onTrainingTimer()

    def onTrainingTimer(self):
        if self.logic is None:
            return
        try:
            progress = self.logic.training()
        except SonoVLMClientError as error:
            self.trainingTimer.stop()
            self._setStatus(f"Training status unavailable: {error}")
            return
        self.ui.trainingProgressBar.value = progress.percent
        self.ui.metricLabel.text = progress.text()
        if progress.running and not self.trainingTimer.isActive():
            self.trainingTimer.start()
        elif not progress.running and self.trainingTimer.isActive():
            self.trainingTimer.stop()
            self.ui.serverInfoLabel.text = self.logic.connect().text()  # a new model may be served
        self._updateButtons(training=progress.running)

    def onTool(self, tool, on):
        """A tool button toggled: place its points in the views (persistent place mode)."""
        if not on:
            if self.activeTool == tool:
                self.activeTool = None
                slicer.app.applicationLogic().GetInteractionNode().SwitchToViewTransformMode()
            return
        for name, button in self._toolButtons().items():
            if name != tool and button.checked:
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)
        self.activeTool = tool
        node = self._toolNode(tool)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def onInteractionModeChanged(self, caller=None, event=None):
        if caller is not None and caller.GetCurrentInteractionMode() != caller.Place:
            self.activeTool = None
            for button in self._toolButtons().values():
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)

    def onPointPlaced(self, caller=None, event=None):
        if self._syncingPrompts:
            return
        # Ask the server once the view has finished its placement event.
        qt.QTimer.singleShot(0, lambda node=caller: self._promptPlaced(node))

    def _promptPlaced(self, node):
        tool = next((name for name, tool_node in self.toolNodes.items() if tool_node is node), None)
        points = control_points_ras(node) if tool is not None else []
        if not points or self.logic is None or self.case is None:
            return
        organ, prompt = self._organAndPrompt()
        if tool == "box":
            if len(points) < 2:
                self._setStatus("Box: click the opposite corner.")
                return
            with self._busy("Segmenting in the box"):
                self._showOutcome(self.logic.set_box(self.case, points[-2], points[-1], organ, prompt))
        else:
            action = "Adding" if tool == "positive" else "Removing"
            with self._busy(f"{action} a region"):
                self._showOutcome(
                    self.logic.add_click(self.case, tool == "positive", points[-1], organ, prompt)
                )
        self._showPrompts()

    def onUndo(self):
        if self.logic is None or self.case is None:
            return
        with self._busy("Undoing"):
            outcome = self.logic.undo(self.case)
            if outcome is None:
                self._setStatus("Nothing to undo.")
            else:
                self.segment_id = outcome.segment_id
                self._showMeasurements(outcome.measurement)
                self._setStatus("Previous contour restored.")
        self._showPrompts()

    def onPropagate(self):
        if self.logic is None or self.case is None or not self.case.is_cine:
            return
        organ, prompt = self._organAndPrompt()
        frames = self.ui.frameConfidenceList
        frames.clear()
        self.ui.propagateProgressBar.value = 0

        def progress(done, total, message):
            self.ui.propagateProgressBar.maximum = total
            self.ui.propagateProgressBar.value = done
            self._setStatus(message)
            slicer.app.processEvents()

        with self._busy("Propagating through the cine"):
            outcome = self.logic.propagate(self.case, organ, prompt, progress=progress)
            self.segment_id = outcome.segment_id
            for frame in outcome.review:
                item = qt.QListWidgetItem(frame.text())
                item.setData(qt.Qt.UserRole, frame.frame)
                frames.addItem(item)
            self._setStatus(f"{len(outcome.review)} frames segmented; review the weakest first.")

    def onFrameClicked(self, item):
        if self.logic is None or self.case is None:
            return
        with self._busy("Showing the frame"):
            self.logic.scene_logic.select_frame(self.case, int(item.data(qt.Qt.UserRole)))
        self.updateMeasurements()
        self._showPrompts()

    def onSegmentModified(self, caller=None, event=None):
        self.measureTimer.start()

    def updateMeasurements(self):
        segment_id = self.ui.segmentEditorWidget.currentSegmentID() or self.segment_id
        if self.logic is None or self.case is None or not segment_id:
            return
        if self.case.segmentation.GetSegmentation().GetSegment(segment_id) is None:
            return
        try:
            self._showMeasurements(self.logic.update_measurements(self.case, segment_id))
        except (ValueError, RuntimeError) as error:
            self._setStatus(f"Could not measure the segment: {error}")

    def onSceneClosed(self, caller=None, event=None):
        self.case = None
        self.segment_id = None
        self.toolNodes = {}
        self.ui.frameConfidenceList.clear()
        self._showMeasurements(None)
        self._updateButtons()

    # ---------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _busy(self, action):
        """Wait cursor and disabled buttons while ``action`` runs; any failure goes to the status
        line and a message box, and the panel is always left usable."""
        self._setButtonsEnabled(False)
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        cursor_set = True
        self._setStatus(f"{action}...")
        slicer.app.processEvents()
        try:
            yield
        except SonoVLMClientError as error:
            qt.QApplication.restoreOverrideCursor()
            cursor_set = False
            if error.status in (401, 403) and self.logic is not None and self._login(self.logic.client):
                self._setStatus(f"{action}: logged in, please try again.")
            else:
                self._fail(action, f"the server answered: {error}", traceback.format_exc())
        except Exception as error:  # the panel must survive whatever went wrong
            qt.QApplication.restoreOverrideCursor()
            cursor_set = False
            logging.exception("SonoVLM: %s failed", action)
            self._fail(action, str(error), traceback.format_exc())
        finally:
            if cursor_set:
                qt.QApplication.restoreOverrideCursor()
            self._updateButtons()

    def _toolButtons(self):
        return {
            "positive": self.ui.positivePointButton,
            "negative": self.ui.negativePointButton,
            "box": self.ui.boxButton,
        }

    def _toolNode(self, tool):
        """The markups node a tool places its points in (made on first use)."""
        node = self.toolNodes.get(tool)
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            name, colour = PROMPT_TOOLS[tool]
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*colour)
            node.GetDisplayNode().SetPointLabelsVisibility(False)
            self.addObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced)
            self.toolNodes[tool] = node
        return node

    def _showPrompts(self):
        """Show the clicks the logic holds for the frame shown (after a reply, an error or undo)."""
        if self.logic is None or self.case is None:
            return
        prompts = self.logic.prompts(self.case)
        ijk_to_ras = volume_ijk_to_ras(self.case.volume)
        self._syncingPrompts = True
        try:
            for tool, points in (
                ("positive", prompts.foreground),
                ("negative", prompts.background),
                ("box", []),
            ):
                node = self._toolNode(tool)
                node.RemoveAllControlPoints()
                if points:
                    for ras in pixel_points_to_ras(ijk_to_ras, [(i, j) for i, j, _ in points]):
                        node.AddControlPoint(*ras)
        finally:
            self._syncingPrompts = False

    def _showOutcome(self, outcome):
        self.segment_id = outcome.segment_id
        self.ui.segmentEditorWidget.setCurrentSegmentID(outcome.segment_id)
        self._showMeasurements(outcome.measurement)
        self._setStatus(f"{segment_name(outcome.organ)} updated.")

    def _organAndPrompt(self):
        return self.ui.organComboBox.currentData, self.ui.promptLineEdit.text.strip() or None

    def _fail(self, action, message, details):
        self._setStatus(f"{action} failed: {message}")
        slicer.util.errorDisplay(f"{action} failed:\n{message}", detailedText=details)

    def _login(self, client):
        """Ask for a user name and password and log ``client`` in (MONAI Label's /auth/token)."""
        username = qt.QInputDialog.getText(
            slicer.util.mainWindow(), "SonoVLM login", "User name:", qt.QLineEdit.Normal, getpass.getuser()
        )
        if not username:
            return False
        password = qt.QInputDialog.getText(
            slicer.util.mainWindow(), "SonoVLM login", "Password:", qt.QLineEdit.Password
        )
        try:
            return bool(client.login(username, password or ""))
        except SonoVLMClientError as error:
            self._setStatus(f"Login failed: {error}")
            return False

    def _showCase(self, case):
        if self.case is not None and self.case is not case:
            self.removeObserver(
                self.case.segmentation, slicer.vtkSegmentation.SegmentModified, self.onSegmentModified
            )
            self.logic.scene_logic.remove_case(self.case)
        self.case = case
        self.segment_id = None
        self.ui.frameConfidenceList.clear()
        self.ui.propagateProgressBar.value = 0
        self._showPrompts()
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView)
        slicer.util.setSliceViewerLayers(background=case.volume, fit=True)
        editor = self.ui.segmentEditorWidget
        editor.setSegmentationNode(case.segmentation)
        editor.setSourceVolumeNode(case.volume)
        if case.browser is not None:  # the frame slider of the Sequences toolbar drives the cine
            slicer.modules.sequences.setToolBarActiveBrowserNode(case.browser)
            slicer.modules.sequences.showSequenceBrowser(case.browser)
        self.addObserver(case.segmentation, slicer.vtkSegmentation.SegmentModified, self.onSegmentModified)
        self.ui.classificationLabel.text = ""
        self._showMeasurements(None)
        spacing = (
            f"{case.spacing_mm[1]:.3f} x {case.spacing_mm[0]:.3f} mm/pixel"
            if case.spacing_mm
            else "not calibrated"
        )
        frames = f", {case.frames} frames (segmenting the current one)" if case.is_cine else ""
        self.ui.caseLabel.text = f"{case.image_id}: {case.cols} x {case.rows} pixels, {spacing}{frames}"
        self._setStatus(f"Loaded {case.image_id}.")

    def _showMeasurements(self, measurement):
        table = self.ui.measurementsTable
        rows = measurement.table_rows() if measurement is not None else []
        table.setRowCount(len(rows))
        for index, (quantity, value) in enumerate(rows):
            table.setItem(index, 0, qt.QTableWidgetItem(quantity))
            table.setItem(index, 1, qt.QTableWidgetItem(value))

    def _fillCombo(self, combo, names):
        current = combo.currentText
        combo.clear()
        for name in names:
            combo.addItem(name)
        if current in names:
            combo.setCurrentIndex(names.index(current))

    def _fillOrgans(self, organs):
        current = self.ui.organComboBox.currentData
        self.ui.organComboBox.clear()
        for organ in organs:
            self.ui.organComboBox.addItem(organ_label_text(organ), organ)
        if current in organs:
            self.ui.organComboBox.setCurrentIndex(organs.index(current))

    def _setStatus(self, text):
        self.ui.statusLabel.text = text
        slicer.util.showStatusMessage(text, 5000)

    def _setButtonsEnabled(self, enabled):
        for button in (
            self.ui.connectButton,
            self.ui.nextSampleButton,
            self.ui.useVolumeButton,
            self.ui.autoSegmentButton,
            self.ui.classifyButton,
            self.ui.submitButton,
            self.ui.trainButton,
            self.ui.stopTrainingButton,
            self.ui.undoInteractionButton,
            self.ui.propagateButton,
            self.ui.frameConfidenceList,
            *self._toolButtons().values(),
        ):
            button.enabled = enabled

    def _updateButtons(self, *args, training=None):
        connected = self.logic is not None
        has_case = connected and self.case is not None and self.case.image_id is not None
        running = self.trainingTimer.isActive() if training is None else training
        self.ui.connectButton.enabled = True
        self.ui.nextSampleButton.enabled = connected
        self.ui.useVolumeButton.enabled = connected and self.ui.volumeSelector.currentNode() is not None
        self.ui.autoSegmentButton.enabled = has_case
        self.ui.classifyButton.enabled = has_case
        self.ui.submitButton.enabled = has_case
        for button in (*self._toolButtons().values(), self.ui.undoInteractionButton):
            button.enabled = has_case
        self.ui.propagateButton.enabled = has_case and self.case.is_cine
        self.ui.frameConfidenceList.enabled = has_case and self.case.is_cine
        self.ui.trainButton.enabled = connected and not running
        self.ui.stopTrainingButton.enabled = connected and running

    @staticmethod
    def _segmentEditorNode():
        """The Segment Editor module's own parameter node, so both editors show the same state."""
        node = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("SegmentEditor")
            node = slicer.mrmlScene.AddNode(node)
        return node


class SonoVLMLogic(ScriptedLoadableModuleLogic, AnnotationSession):
    """The module's logic: an :class:`~SonoVLMLib.workflow.AnnotationSession` on Slicer's scene.

    Args:
        server_url: the SonoVLM server.
        token: bearer token when the server has authentication on.
        client_id: who annotates (sent with next-sample and label requests).
    """

    def __init__(self, server_url=DEFAULT_SERVER_URL, token=None, client_id=None):
        ScriptedLoadableModuleLogic.__init__(self)
        work_dir = slicer.util.tempDirectory("SonoVLM")
        client = SonoVLMClient(
            server_url, token=token, client_id=client_id, download_dir=os.path.join(work_dir, "replies")
        )
        AnnotationSession.__init__(self, client, UltrasoundSceneLogic(slicer.mrmlScene), work_dir)


class SonoVLMTest(ScriptedLoadableModuleTest):
    """Runs the real workflow in Slicer against a server (``SONOVLM_SERVER_URL``, else the URL in
    the settings, else http://127.0.0.1:8000). Without a server it says so and skips.

    Submitting a label changes the server's datastore, so the test submits only when
    ``SONOVLM_SELFTEST_SUBMIT=1`` (use it against a demo server).
    """

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_workflow_against_server()

    def test_workflow_against_server(self):
        url = os.environ.get("SONOVLM_SERVER_URL") or slicer.util.settingsValue(
            SERVER_URL_SETTING, DEFAULT_SERVER_URL
        )
        logic = SonoVLMLogic(url, client_id="sonovlm-selftest")
        try:
            summary = logic.connect()
        except SonoVLMClientError as error:
            message = (
                f"SonoVLM self-test SKIPPED: no server answers at {url} ({error}). "
                "Start one (make demo) or set SONOVLM_SERVER_URL."
            )
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.assertIn("segmentation", summary.models)
        self.assertIn("classification", summary.models)

        self.delayDisplay("Next sample")
        case = logic.next_case(summary.strategies[0] if summary.strategies else "random")
        self.assertIsNotNone(case, "the server has no unlabelled image to test with")
        self.assertEqual(case.volume.GetImageData().GetDimensions()[:2], (case.cols, case.rows))

        self.delayDisplay("Auto-segment")
        outcome = logic.auto_segment(case, "auto")
        self.assertIn(outcome.organ, ORGAN_LABELS)
        segment = case.segmentation.GetSegmentation().GetSegment(outcome.segment_id)
        self.assertEqual(segment.GetName(), segment_name(outcome.organ))
        lines = slicer.util.getNodesByClass("vtkMRMLMarkupsLineNode")
        self.assertEqual(len(lines), 0 if outcome.measurement is None else 2)

        self.delayDisplay("Classify")
        classification = logic.classify(case, outcome.organ)
        self.assertAlmostEqual(sum(score for _, score in classification.probabilities), 1.0, places=3)

        if os.environ.get("SONOVLM_SELFTEST_SUBMIT") == "1" and outcome.measurement is not None:
            self.delayDisplay("Submit")
            reply = logic.submit(case, outcome.segment_id, "unknown")
            self.assertEqual(reply.get("image"), case.image_id)

        progress = logic.training()
        self.assertIn(progress.state, ("IDLE", "SUBMITTED", "RUNNING", "DONE", "ERROR", "STOPPED"))
        self.delayDisplay("SonoVLM workflow test passed")
