"""SonoVLM: one-click lesion segmentation and classification of 2D ultrasound in 3D Slicer,
against a SonoVLM MONAI Label server. Research use only.

The work is done by Qt-free code in ``SonoVLMLib`` (tested outside Slicer with slicer-core):
``SonoVLMLogic`` holds an :class:`~SonoVLMLib.workflow.AnnotationSession` (by composition: Slicer's
``ScriptedLoadableModuleLogic.__init__`` calls ``super().__init__()`` without arguments) and the
Live panel's :class:`~SonoVLMLib.live.LiveLogic`; the widget wires the panel's buttons to them,
runs server requests off the GUI thread (:mod:`SonoVLMLib.tasks`) and shows what comes back.
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
from SonoVLMLib.client import ImageExistsError, SonoVLMClient, SonoVLMClientError
from SonoVLMLib.interaction import PROMPT_TOOLS, PromptMarkups
from SonoVLMLib.live import LABEL_DEVICE, LiveLogic, upload_case_steps
from SonoVLMLib.organs import ORGAN_LABELS, segment_name
from SonoVLMLib.replies import organ_label_text
from SonoVLMLib.scene import CaseObserver, UltrasoundSceneLogic
from SonoVLMLib.tasks import BackgroundSteps, Cancelled
from SonoVLMLib.workflow import AnnotationSession

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
SERVER_URL_SETTING = "SonoVLM/serverUrl"
CLIENT_ID_SETTING = "SonoVLM/clientId"
#: A bearer token for scripted use comes from the environment, never from saved settings.
TOKEN_ENVIRONMENT = "SONOVLM_TOKEN"
TRAINING_POLL_MS = 3000
REQUEST_POLL_MS = 50
LIVE_REFRESH_MS = 250

#: Panel shortcuts (Slicer's own: Ctrl+Shift+A/T/Space are the Markups toolbar's,
#: Ctrl+Shift+arrows the Sequences toolbar's, Ctrl+Z the Segment Editor's undo).
SHORTCUTS = {
    "autoSegment": "Alt+A",
    "positive": "Alt+P",
    "negative": "Alt+N",
    "box": "Alt+B",
    "undo": "Alt+Z",
    "submit": "Alt+S",
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
    """The panel: each button starts one :class:`SonoVLMLogic` action; server requests run off the
    GUI thread (:meth:`_run`), the panel updates on it. The widget keeps to the UI (Qt widgets,
    views, observers): nodes, IJK/RAS geometry, points and segments are the logic's
    (tests/slicer_extension/test_static.py fails on scene-level calls here)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.case = None
        self.segment_id = None
        self.shortcuts = []
        self.activeTool = None
        self._syncingPrompts = False
        self._caseObserver = None
        self._task = None  # the action in flight: (title, BackgroundSteps, on_done)
        self._applying = False  # the extension itself is changing the segment
        self._lastChangeWasAI = False
        self.liveMonitor = None
        self._liveShown = None  # (image, label) node ids laid out in the views

    @property
    def session(self):
        return self.logic.session if self.logic is not None else None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/SonoVLM.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = SonoVLMLogic()

        self.ui.serverUrlLineEdit.text = slicer.util.settingsValue(SERVER_URL_SETTING, DEFAULT_SERVER_URL)
        self.ui.measurementsTable.horizontalHeader().setStretchLastSection(True)
        self.ui.measurementsTable.verticalHeader().setVisible(False)
        self._fillOrgans(list(ORGAN_LABELS))

        editor = self.ui.segmentEditorWidget
        editor.setMRMLSegmentEditorNode(self.logic.segment_editor_node())
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
        self.ui.cancelRequestButton.connect("clicked()", self.onCancelRequest)
        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        for tool, button in self._toolButtons().items():
            button.connect("toggled(bool)", lambda on, tool=tool: self.onTool(tool, on))
        self.ui.undoInteractionButton.connect("clicked()", self.onUndo)
        self.ui.propagateButton.connect("clicked()", self.onPropagate)
        self.ui.frameConfidenceList.connect("itemClicked(QListWidgetItem*)", self.onFrameClicked)
        self.ui.liveStartButton.connect("clicked()", self.onLiveStart)
        self.ui.liveStopButton.connect("clicked()", self.onLiveStop)
        self.ui.liveFreezeButton.connect("clicked()", self.onFreeze)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.InteractionModeChangedEvent, self.onInteractionModeChanged)

        actions = {
            "autoSegment": self.onAutoSegment,
            "positive": lambda: self._toggleTool("positive"),
            "negative": lambda: self._toggleTool("negative"),
            "box": lambda: self._toggleTool("box"),
            "undo": self.onUndo,
            "submit": self.onSubmit,
        }
        for name, keys in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", actions[name])
            self.shortcuts.append(shortcut)

        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(TRAINING_POLL_MS)
        self.trainingTimer.connect("timeout()", self.onTrainingTimer)
        self.measureTimer = qt.QTimer()  # debounces measurement updates while the user paints
        self.measureTimer.setSingleShot(True)
        self.measureTimer.setInterval(300)
        self.measureTimer.connect("timeout()", self.updateMeasurements)
        self.requestTimer = qt.QTimer()
        self.requestTimer.setInterval(REQUEST_POLL_MS)
        self.requestTimer.connect("timeout()", self._pollRequest)
        self.liveTimer = qt.QTimer()  # the figures decay when the stream stops: polled, not pushed
        self.liveTimer.setInterval(LIVE_REFRESH_MS)
        self.liveTimer.connect("timeout()", self.updateLive)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneClosing)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)
        self._updateButtons()

    def enter(self):
        """The module is shown: put the case back into the embedded Segment Editor."""
        if self.case is not None:
            editor = self.ui.segmentEditorWidget
            editor.setSegmentationNode(self.case.segmentation)
            editor.setSourceVolumeNode(self.case.volume)

    def exit(self):
        """The user leaves the module: no Segment Editor effect or SonoVLM tool stays active."""
        self.ui.segmentEditorWidget.setActiveEffect(None)
        for button in self._toolButtons().values():
            if button.checked:
                button.checked = False  # onTool leaves place mode
        self.measureTimer.stop()

    def cleanup(self):
        if self._task is not None:
            self._task[1].cancel()
            self._task = None
        self._closeCaseObserver()
        self._stopLive()
        self.removeObservers()
        self.trainingTimer.stop()
        self.measureTimer.stop()
        self.requestTimer.stop()
        for shortcut in self.shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self.shortcuts = []

    # ---------------------------------------------------------------- actions

    def onConnect(self):
        url = self.ui.serverUrlLineEdit.text.strip() or DEFAULT_SERVER_URL
        qt.QSettings().setValue(SERVER_URL_SETTING, url)
        client_id = slicer.util.settingsValue(CLIENT_ID_SETTING, "") or getpass.getuser()
        with self._busy("Connecting"):
            self.logic.open_session(url, token=os.environ.get(TOKEN_ENVIRONMENT) or None, client_id=client_id)
            client = self.session.client
            if client.auth_enabled() and not client.token:
                self._login(client)
            summary = self.session.connect()
            self._fillCombo(self.ui.strategyComboBox, summary.strategies)
            self._fillCombo(self.ui.trainModelComboBox, summary.trainers)
            self._fillOrgans(summary.organs)
            self.ui.serverInfoLabel.text = summary.text()
            self._setStatus(f"Connected to {url}")
        if self.session is not None:
            self.onTrainingTimer()

    def onNextSample(self, confirm=True):
        if self.session is None or self._task is not None:
            return
        if (
            confirm
            and self.case is not None
            and not slicer.util.confirmOkCancelDisplay(
                "Load the next case? Work on the current one that was not submitted is dropped."
            )
        ):
            return

        def done(case):
            if case is None:
                self._setStatus("The server has no unlabelled image left.")
            else:
                self._showCase(case)

        self._run(
            "Loading the next case", self.session.next_case_steps(self.ui.strategyComboBox.currentText), done
        )

    def onUseVolume(self):
        volume = self.ui.volumeSelector.currentNode()
        if self.session is None or volume is None or self._task is not None:
            return
        server = self.session.client.server_url
        if not slicer.util.confirmOkCancelDisplay(
            f"Upload the pixels of '{volume.GetName()}' to {server}?\n\n"
            "The image is patient data: upload it only to a server you are allowed to send it to. "
            "Only the pixels and the pixel spacing are sent (no DICOM header), but burned-in text "
            "in the image goes with them.",
            windowTitle="SonoVLM: upload a patient image",
        ):
            return
        if self.case is not None and self.case.volume is volume and self.case.image_id is None:
            self._uploadCase(self.case, replace=False)  # a frozen live frame: keep its contour
        else:
            self._upload(volume, replace=False)

    def _upload(self, volume, replace):
        def failed(error):
            if not isinstance(error, ImageExistsError):
                return False
            choice = self._askExisting(error.image_id)
            if choice == "replace":
                self._upload(volume, replace=True)
            elif choice == "reuse":
                with self._busy("Using the server's copy"):
                    self._showCase(self.session.use_server_copy(volume))
            return True

        self._run(
            f"Uploading {volume.GetName()}",
            self.session.open_volume_steps(volume, replace=replace),
            self._showCase,
            on_error=failed,
        )

    def _uploadCase(self, case, replace):
        """Upload the image of a case already shown (a frozen live frame), keeping its segments."""

        def done(uploaded):
            self.ui.caseLabel.text = self._caseText(uploaded)
            self._setStatus(f"{uploaded.image_id} is on the server: correct the contour, then submit.")

        def failed(error):
            if not isinstance(error, ImageExistsError):
                return False
            choice = self._askExisting(error.image_id)
            if choice == "replace":
                self._uploadCase(case, replace=True)
            elif choice == "reuse":
                case.set_image_id(error.image_id)
                done(case)
            return True

        self._run(
            f"Uploading {case.volume.GetName()}",
            upload_case_steps(self.session, case, replace=replace),
            done,
            on_error=failed,
        )

    def onAutoSegment(self):
        if self.session is None or self.case is None or self._task is not None:
            return
        if not self.ui.autoSegmentButton.enabled:
            return
        organ, prompt = self._organAndPrompt()

        def done(outcome):
            self._showOutcome(outcome)
            confidence = outcome.result.get("confidence")
            details = f", confidence {float(confidence):.2f}" if confidence is not None else ""
            version = outcome.result.get("model_version")
            details += f", model {version}" if version else ""
            self._setStatus(
                f"{segment_name(outcome.organ)} segmented{details}. Correct it with the editor, then submit."
            )

        self._run(
            "Auto-segmenting", self.session.auto_segment_steps(self.case, organ, prompt), done, ai_step=True
        )

    def onClassify(self):
        if self.session is None or self.case is None or self._task is not None:
            return

        def done(summary):
            self.ui.classificationLabel.text = summary.text()
            label, score = summary.probabilities[0]
            self._setStatus(f"Classified: {label} ({score * 100:.0f} %)")

        self._run(
            "Classifying", self.session.classify_steps(self.case, self.ui.organComboBox.currentData), done
        )

    def onSubmit(self):
        segment_id = self.ui.segmentEditorWidget.currentSegmentID() or self.segment_id
        if self.session is None or self.case is None or not segment_id or self._task is not None:
            return

        def done(reply):
            self._setStatus(f"Label of {self.case.image_id} saved ({self.session.submissions} this session).")
            if self.session.retrain_due(self.ui.retrainEverySpinBox.value):
                self.onTrain()
            if self.ui.autoNextCheckBox.checked:
                qt.QTimer.singleShot(0, lambda: self.onNextSample(confirm=False))

        steps = self.session.submit_steps(self.case, segment_id, self.ui.pathologyComboBox.currentText)
        self._run("Submitting the label", steps, done)

    def onTrain(self):
        model = self.ui.trainModelComboBox.currentText
        if self.session is None or not model:
            return
        with self._busy(f"Starting training of {model}"):
            self.session.start_training(model)
            self._setStatus(f"Training of {model} started on the server.")
            self.trainingTimer.start()
        self.onTrainingTimer()

    def onStopTraining(self):
        if self.session is None or not slicer.util.confirmOkCancelDisplay("Stop the running training?"):
            return
        with self._busy("Stopping training"):
            self.session.stop_training()
            self._setStatus("Training stopped; the served model is unchanged.")
        self.onTrainingTimer()

    def onTrainingTimer(self):
        """Poll the training; every server call is inside the try (a timer slot must not raise)."""
        if self.session is None:
            return
        try:
            progress = self.session.training()
            self.ui.trainingProgressBar.value = progress.percent
            self.ui.metricLabel.text = progress.text()
            if progress.running and not self.trainingTimer.isActive():
                self.trainingTimer.start()
            elif not progress.running and self.trainingTimer.isActive():
                self.trainingTimer.stop()
                self.ui.serverInfoLabel.text = self.session.connect().text()  # a new model may be served
        except SonoVLMClientError as error:
            self.trainingTimer.stop()
            self._setStatus(f"Training status unavailable: {error}")
            self._updateButtons(training=False)
            return
        self._updateButtons(training=progress.running)

    # ---------------------------------------------------------------- live

    def onLiveStart(self):
        """Watch the stream OpenIGTLinkIF receives (nodes picked, else found by device name)."""
        with self._busy("Starting the live view"):
            self._stopLive()
            if self.ui.liveLabelSelector.currentNode() is None:
                self.logic.live.ensure_label_node(LABEL_DEVICE)  # so the label shows as a labelmap
            self.liveMonitor = self.logic.live.monitor(
                self.ui.liveImageSelector.currentNode(),
                self.ui.liveLabelSelector.currentNode(),
                self.ui.liveStatusSelector.currentNode(),
            )
            self.liveMonitor.start()
            self.liveTimer.start()
            self.updateLive()

    def onLiveStop(self):
        self._stopLive()
        self.ui.liveMessageLabel.text = "Stopped (OpenIGTLinkIF keeps receiving; Start to watch again)."
        self._updateButtons()

    def _stopLive(self):
        self.liveTimer.stop()
        if self.liveMonitor is not None:
            self.liveMonitor.stop()
        self._liveShown = None

    def updateLive(self):
        """Show the monitor's figures (timer slot: must not raise)."""
        monitor = self.liveMonitor
        if monitor is None:
            return
        try:
            reading = monitor.reading()
            self.ui.liveFpsValueLabel.text = reading.fps_text()
            self.ui.liveLatencyValueLabel.text = reading.latency_text()
            self.ui.liveMessageLabel.text = reading.message_text()
            self._showLiveLayers(monitor)
        except Exception:  # noqa: BLE001 - a timer slot must survive
            logging.exception("SonoVLM: live update failed")
        self._updateButtons()

    def _showLiveLayers(self, monitor):
        """Lay the live image and its labelmap out in the slice views once they both exist."""
        layers = self.logic.live.view_layers(monitor)
        if layers is None:
            return
        shown = (monitor.image_node.GetID(), monitor.label_node.GetID())
        if shown == self._liveShown:
            return
        self._liveShown = shown
        # The views turn into the frame's plane as it is now (a tracked probe moves it later).
        slicer.util.setSliceViewerLayers(**layers)

    def onFreeze(self):
        """Copy the current frame and labelmap into a case: correct it, upload it, submit it."""
        monitor = self.liveMonitor
        if monitor is None or self._task is not None:
            return
        if self.case is not None and not slicer.util.confirmOkCancelDisplay(
            "Freeze the live frame? Work on the current case that was not submitted is dropped."
        ):
            return
        with self._busy("Freezing the frame"):
            organ = self.ui.organComboBox.currentData
            frozen = self.logic.live.freeze(
                monitor.image_node, monitor.label_node, monitor.status, fallback_organ=organ
            )
            self._stopLive()  # the views now show the frozen frame
            self._showCase(frozen.case)
            slicer.util.setSliceViewerLayers(
                background=frozen.case.volume, foreground=None, label=None, fit=True, rotateToVolumePlane=True
            )
            self.segment_id = frozen.segment_id
            self.ui.segmentEditorWidget.setCurrentSegmentID(frozen.segment_id)
            self._showMeasurements(frozen.measurement)
            self.ui.volumeSelector.setCurrentNode(frozen.case.volume)
            message = f"Frozen {frozen.case.volume.GetName()} ({segment_name(frozen.organ)})."
            if not frozen.geometry_matches:
                message += " Its labelmap was computed at another probe position: check the contour."
            message += (
                " Correct it with the editor, then Upload and use, then Submit; Start resumes the stream."
            )
            self.ui.liveMessageLabel.text = message
            self._setStatus(message)

    def onCancelRequest(self):
        if self._task is None:
            return
        title, task, _, _ = self._task
        task.cancel()
        self._endRequest()
        self._showPrompts()
        self._setStatus(f"{title}: cancelled; the server's answer will be dropped.")

    def _toggleTool(self, tool):
        button = self._toolButtons()[tool]
        if button.enabled:
            button.checked = not button.checked

    def onTool(self, tool, on):
        """A tool button toggled: place its points in the views (persistent place mode)."""
        if not on:
            if self.activeTool == tool:
                self.activeTool = None
                self.logic.prompt_markups.stop_placing()
            return
        for name, button in self._toolButtons().items():
            if name != tool and button.checked:
                button.blockSignals(True)
                button.checked = False
                button.blockSignals(False)
        self.ui.segmentEditorWidget.setActiveEffect(None)  # a paint effect would take the clicks
        self.activeTool = tool
        self._toolNode(tool)  # observed before its first point
        self.logic.prompt_markups.start_placing(tool)

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
        tool, points = self.logic.prompt_markups.placed(node)
        if not points or self.session is None or self.case is None:
            return
        if self._task is not None:
            self._setStatus("Wait for the running request (or cancel it) before the next click.")
            self._showPrompts()
            return
        organ, prompt = self._organAndPrompt()
        if tool == "box":
            if len(points) < 2:
                self._setStatus("Box: click the opposite corner.")
                return
            steps = self.session.set_box_steps(self.case, points[-2], points[-1], organ, prompt)
            title = "Segmenting in the box"
        else:
            steps = self.session.add_click_steps(self.case, tool == "positive", points[-1], organ, prompt)
            title = "Adding a region" if tool == "positive" else "Removing a region"
        self._run(title, steps, self._showOutcome, ai_step=True)

    def onUndo(self):
        """One undo stack: Slicer's Segment Editor holds AI steps and paint edits alike; the clicks
        and box come back when the step undone was an AI one."""
        if self.session is None or self.case is None or self._task is not None:
            return
        editor = self.ui.segmentEditorWidget
        if not editor.undoEnabled:
            self._setStatus("Nothing to undo.")
            return
        restore_prompts = self._lastChangeWasAI
        self._applying = True
        try:
            editor.undo()
        finally:
            self._applying = False
        if restore_prompts:
            self.session.undo_prompts(self.case)
        self._lastChangeWasAI = False
        self._showPrompts()
        self.updateMeasurements()
        self._setStatus("Previous contour restored.")

    def onPropagate(self):
        if self.session is None or self.case is None or not self.case.is_cine or self._task is not None:
            return
        organ, prompt = self._organAndPrompt()
        frames = self.ui.frameConfidenceList
        frames.clear()
        self.ui.propagateProgressBar.value = 0

        def progress(done, total, message):
            self.ui.propagateProgressBar.maximum = total
            self.ui.propagateProgressBar.value = done
            self._setStatus(message)

        def done(outcome):
            self.segment_id = outcome.segment_id
            for frame in outcome.review:
                item = qt.QListWidgetItem(frame.text())
                item.setData(qt.Qt.UserRole, frame.frame)
                frames.addItem(item)
            self.updateMeasurements()
            self._setStatus(f"{len(outcome.review)} frames segmented; review the weakest first.")

        steps = self.session.propagate_steps(self.case, organ, prompt, progress=progress)
        self._run("Propagating through the cine", steps, done, ai_step=True)

    def onFrameClicked(self, item):
        if self.session is None or self.case is None:
            return
        with self._busy("Showing the frame"):
            self.logic.select_frame(self.case, int(item.data(qt.Qt.UserRole)))

    def onSegmentEdited(self):
        if not self._applying:
            self._lastChangeWasAI = False
        self.measureTimer.start()

    def onFrameChanged(self, frame):
        """The frame shown changed (Sequences toolbar, the review list, playback): show that frame's
        clicks and measurements."""
        self.segment_id = None
        self._showPrompts()
        self.measureTimer.start()

    def updateMeasurements(self):
        if self.session is None or self.case is None:
            return
        segment_id = self.ui.segmentEditorWidget.currentSegmentID() or self.segment_id
        try:
            self._showMeasurements(self.session.measure_shown(self.case, segment_id))
        except (ValueError, RuntimeError) as error:
            self._setStatus(f"Could not measure the segment: {error}")

    def onSceneClosing(self, caller=None, event=None):
        if self._task is not None:
            self._task[1].cancel()
            self._endRequest()
        self._closeCaseObserver()
        self._stopLive()
        self.liveMonitor = None

    def onSceneClosed(self, caller=None, event=None):
        """Node ids start again after Close Scene: nothing the session keyed by them survives."""
        self.logic.close_scene()
        self.case = None
        self.segment_id = None
        self._lastChangeWasAI = False
        self.ui.frameConfidenceList.clear()
        self._showMeasurements(None)
        self._updateButtons()

    # ---------------------------------------------------------------- requests

    def _run(self, title, steps, on_done, on_error=None, ai_step=False):
        """Run ``steps`` (an action of the session) with its requests off the GUI thread.

        The panel's action buttons are disabled and Cancel enabled until it ends; the views stay
        usable. ``on_done(outcome)`` runs on the GUI thread; ``on_error(error)`` may handle an
        error (returns ``True``), else it goes to the status line and a message box. An
        ``ai_step`` changes the contour: the Segment Editor saves its state first (one undo stack).
        """
        if self._task is not None:
            return
        if ai_step:
            self.ui.segmentEditorWidget.saveStateForUndo()
        self._setButtonsEnabled(False)
        self.ui.cancelRequestButton.enabled = True
        self.ui.requestProgressBar.visible = True
        self._setStatus(f"{title}...")
        self._applying = True
        try:
            task = BackgroundSteps(steps)
        finally:
            self._applying = False
        self._task = (title, task, on_done, (on_error, ai_step))
        self._pollRequest()
        if self._task is not None:
            self.requestTimer.start()

    def _pollRequest(self):
        if self._task is None:
            self.requestTimer.stop()
            return
        title, task, on_done, (on_error, ai_step) = self._task
        self._applying = True
        try:
            finished = task.poll()
        finally:
            self._applying = False
        if not finished:
            return
        self._endRequest()
        if task.error is None:
            if ai_step:
                self._lastChangeWasAI = True
            try:
                on_done(task.outcome)
            except Exception as error:  # the panel must survive whatever went wrong
                logging.exception("SonoVLM: %s failed", title)
                self._fail(title, str(error), traceback.format_exc())
        elif isinstance(task.error, Cancelled):
            pass
        elif on_error is not None and on_error(task.error):
            pass
        else:
            self._showError(title, task.error)
        self._showPrompts()
        self._updateButtons()

    def _endRequest(self):
        self._task = None
        self.requestTimer.stop()
        self.ui.cancelRequestButton.enabled = False
        self.ui.requestProgressBar.visible = False
        self._updateButtons()

    def _showError(self, action, error):
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if isinstance(error, SonoVLMClientError):
            if error.status in (401, 403) and self.session is not None and self._login(self.session.client):
                self._setStatus(f"{action}: logged in, please try again.")
            else:
                self._fail(action, f"the server answered: {error}", details)
        else:
            logging.error("SonoVLM: %s failed: %s", action, details)
            self._fail(action, str(error), details)

    # ---------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _busy(self, action):
        """Wait cursor and disabled buttons while a short ``action`` runs on the GUI thread; any
        failure goes to the status line and a message box, and the panel is always left usable."""
        self._setButtonsEnabled(False)
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        self._setStatus(f"{action}...")
        try:
            yield
        except Exception as error:  # the panel must survive whatever went wrong
            qt.QApplication.restoreOverrideCursor()
            self._showError(action, error)
        else:
            qt.QApplication.restoreOverrideCursor()
        finally:
            self._updateButtons()

    def _askExisting(self, image_id):
        """The server has ``image_id`` already: "replace", "reuse" or ``None`` (cancel)."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("SonoVLM: image already on the server")
        box.setText(
            f"The server already has this image ({image_id}).\n\n"
            "Use the server's copy (its labels stay), or replace it with this volume?"
        )
        reuse = box.addButton("Use the server's copy", qt.QMessageBox.AcceptRole)
        replace = box.addButton("Replace", qt.QMessageBox.DestructiveRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        clicked = box.clickedButton()
        return "reuse" if clicked == reuse else "replace" if clicked == replace else None

    def _toolButtons(self):
        return {
            "positive": self.ui.positivePointButton,
            "negative": self.ui.negativePointButton,
            "box": self.ui.boxButton,
        }

    def _toolNode(self, tool):
        """The markups node a tool places its points in (the logic makes it), observed for clicks."""
        node = self.logic.prompt_markups.node(tool)
        if not self.hasObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced):
            self.addObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced)
        return node

    def _showPrompts(self):
        """Show the clicks the session holds for the frame shown (after a reply, an error or undo)."""
        if self.session is None or self.case is None:
            return
        for tool in PROMPT_TOOLS:
            self._toolNode(tool)  # observed before its points change
        self._syncingPrompts = True
        try:
            self.logic.show_prompts(self.case)
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
        """Ask for a user name and password and log ``client`` in (MONAI Label's /auth/token).
        The client keeps them in memory only, to renew the token silently when it expires."""
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

    def _closeCaseObserver(self):
        if self._caseObserver is not None:
            self._caseObserver.close()
            self._caseObserver = None

    def _showCase(self, case):
        if self.case is not None and self.case is not case:
            self._closeCaseObserver()
            self.logic.remove_case(self.case)
        self.case = case
        self.segment_id = None
        self._lastChangeWasAI = False
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
        self._caseObserver = CaseObserver(case, on_edit=self.onSegmentEdited, on_frame=self.onFrameChanged)
        self.ui.classificationLabel.text = ""
        self._showMeasurements(None)
        self.ui.caseLabel.text = self._caseText(case)
        self._setStatus(f"Loaded {case.image_id or case.name}.")

    @staticmethod
    def _caseText(case):
        spacing = (
            f"{case.spacing_mm[1]:.3f} x {case.spacing_mm[0]:.3f} mm/pixel"
            if case.spacing_mm
            else "not calibrated"
        )
        frames = f", {case.frames} frames (contours per frame)" if case.is_cine else ""
        where = case.image_id or f"{case.name} (not on the server yet)"
        return f"{where}: {case.cols} x {case.rows} pixels, {spacing}{frames}"

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
            self.ui.liveFreezeButton,
            *self._toolButtons().values(),
        ):
            button.enabled = enabled

    def _updateButtons(self, *args, training=None):
        if self._task is not None:  # a request is running: only Cancel
            self._setButtonsEnabled(False)
            return
        connected = self.session is not None
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
        watching = self.liveMonitor is not None and self.liveMonitor.running
        self.ui.liveStartButton.enabled = True
        self.ui.liveStopButton.enabled = watching
        self.ui.liveFreezeButton.enabled = (
            watching and self.liveMonitor.image_node is not None and self.liveMonitor.label_node is not None
        )


class SonoVLMLogic(ScriptedLoadableModuleLogic):
    """The module's logic: the scene logic of Slicer's scene (``self.scene_logic``), the Live
    panel's (``self.live``), the interaction tools' markups nodes and place mode
    (``self.prompt_markups``) and, once connected, one
    :class:`~SonoVLMLib.workflow.AnnotationSession` with a server (``self.session``).

    Constructed without arguments, as Slicer constructs module logics; held by composition
    (Slicer's ``ScriptedLoadableModuleLogic.__init__`` calls ``super().__init__()`` with no
    arguments, so the session cannot be a second base class).

    Args:
        scene: the MRML scene; ``slicer.mrmlScene`` by default.
    """

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene_logic = UltrasoundSceneLogic(scene if scene is not None else slicer.mrmlScene)
        self.live = LiveLogic(self.scene_logic)
        self.prompt_markups = PromptMarkups(self.scene_logic.scene)
        self.session = None

    def open_session(self, server_url=DEFAULT_SERVER_URL, token=None, client_id=None, timeout=120.0):
        """A new session with ``server_url`` (replaces the previous one; nothing is sent yet)."""
        work_dir = os.path.join(slicer.util.tempDirectory("SonoVLM"), "session")
        client = SonoVLMClient(
            server_url,
            timeout=timeout,
            token=token,
            client_id=client_id,
            download_dir=os.path.join(work_dir, "replies"),
        )
        self.session = AnnotationSession(client, self.scene_logic, work_dir)
        return self.session

    def remove_case(self, case):
        """Remove a case from the scene and the session's state."""
        if self.session is not None:
            self.session.forget_case(case)
        self.scene_logic.remove_case(case)

    def close_scene(self):
        """The scene was closed: clicks, undo, organs and the tools' nodes, all keyed by node ids
        (which start again), are dropped."""
        self.prompt_markups.forget()
        if self.session is not None:
            self.session.reset()

    def segment_editor_node(self):
        """The Segment Editor module's parameter node (made when missing), so that the panel's
        embedded editor and the Segment Editor module show the same state."""
        return self.scene_logic.segment_editor_node()

    def select_frame(self, case, frame):
        """Show ``frame`` (0-based) of a cine ``case``; raises ValueError for a frame out of range."""
        self.scene_logic.select_frame(case, frame)

    def show_prompts(self, case):
        """Put the session's clicks of the frame shown (``[i, j, k]`` voxels) into the tools'
        markups nodes at their RAS positions (mm) on ``case.volume``; the box corners are cleared.

        Raises:
            RuntimeError: no session is open.
        """
        if self.session is None:
            raise RuntimeError("no session with a server is open: connect first")
        self.prompt_markups.show(case.volume, self.session.prompts(case))


def _received_image(scene, device, voxels, ijk_to_ras):
    """Update (or make) the volume of ``device`` as OpenIGTLinkIF does when an IMAGE arrives
    (SlicerOpenIGTLink's OpenIGTLinkIF/MRML/vtkMRMLIGTLConnectorNode.cxx: the first volume of the
    device's name, else a new scalar volume; IJK-to-RAS and pixels set inside
    StartModify/EndModify, then Modified). ``voxels`` ``(rows, cols)``; ``ijk_to_ras`` 4 x 4."""
    from SonoVLMLib.geometry import array_to_matrix

    node = scene.GetFirstNode(device, "vtkMRMLScalarVolumeNode")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", device)
        node.CreateDefaultDisplayNodes()
    was_modifying = node.StartModify()
    node.SetIJKToRASMatrix(array_to_matrix(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, voxels[None])
    node.Modified()
    node.EndModify(was_modifying)
    return node


def _received_text(scene, device, text):
    """Update (or make) the text node of ``device`` as OpenIGTLinkIF does when a STRING arrives."""
    node = scene.GetFirstNode(device, "vtkMRMLTextNode")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTextNode", device)
    was_modifying = node.StartModify()
    node.SetText(text)
    node.Modified()
    node.EndModify(was_modifying)
    return node


class SonoVLMTest(ScriptedLoadableModuleTest):
    """Runs the Live panel's logic on a simulated stream (no server needed), then the real
    workflow in Slicer against a server (``SONOVLM_SERVER_URL``, else the URL in the settings,
    else http://127.0.0.1:8000). Without a server the workflow part says so and skips.

    Submitting a label changes the server's datastore, so the test submits only when
    ``SONOVLM_SELFTEST_SUBMIT=1`` (use it against a demo server).
    """

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_live_panel()
        self.setUp()
        self.test_workflow_against_server()

    def test_live_panel(self):
        """Frame rate, latency and Freeze on nodes updated as OpenIGTLinkIF updates them (the
        stream is simulated in the scene: no PLUS or sonovlm live needed)."""
        import json

        import numpy as np
        from SonoVLMLib import live
        from SonoVLMLib.geometry import volume_ijk_to_ras

        self.delayDisplay("Live panel: a simulated stream at 10 frames per second")
        logic = SonoVLMLogic()
        scene = slicer.mrmlScene
        label_node = logic.live.ensure_label_node()
        now = [0.0]
        monitor = logic.live.monitor(clock=lambda: now[0])
        monitor.start()
        rows, cols = 60, 80
        ijk_to_ras = np.diag([-0.2, -0.25, 1.0, 1.0])
        ijk_to_ras[:3, 3] = (5.0, 10.0, -3.0)
        mask = np.zeros((rows, cols), np.uint8)
        mask[20:40, 30:55] = ORGAN_LABELS["lymph_node"]
        rng = np.random.default_rng(0)
        for index in range(10):
            now[0] = index * 0.1
            pixels = rng.integers(0, 255, (rows, cols), dtype=np.uint8)
            _received_image(scene, live.IMAGE_DEVICE, pixels, ijk_to_ras)
            _received_image(scene, live.LABEL_DEVICE, mask, ijk_to_ras)
            status = {"event": "frame", "organ": "lymph_node", "lesion": True, "latency_ms": 40.0 + index}
            _received_text(scene, live.STATUS_DEVICE, json.dumps(status))
        self.assertIs(monitor.label_node, label_node)  # the labelmap made at Start is reused
        self.assertEqual(monitor.frames, 10)
        self.assertAlmostEqual(monitor.fps(now=0.95), 10.0, places=6)
        self.assertEqual(monitor.status.latency_ms, 49.0)
        _received_text(scene, live.STATUS_DEVICE, "{broken")
        self.assertIn("SonoVLMStatus: not JSON", monitor.reading().error)

        self.delayDisplay("Live panel: Freeze")
        frozen = logic.live.freeze(monitor.image_node, monitor.label_node, monitor.status)
        monitor.stop()
        self.assertEqual(frozen.organ, "lymph_node")
        np.testing.assert_allclose(volume_ijk_to_ras(frozen.case.volume), ijk_to_ras, atol=1e-9)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(frozen.case.volume)[0], pixels)
        segment_mask = logic.scene_logic.segment_mask(frozen.case, frozen.segment_id)
        np.testing.assert_array_equal(segment_mask, mask != 0)
        segment = frozen.case.segmentation.GetSegmentation().GetSegment(frozen.segment_id)
        self.assertEqual(segment.GetName(), segment_name("lymph_node"))
        _received_image(scene, live.IMAGE_DEVICE, np.zeros((rows, cols), np.uint8), ijk_to_ras)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(frozen.case.volume)[0], pixels)
        self.delayDisplay("Live panel test passed")

    def test_workflow_against_server(self):
        url = os.environ.get("SONOVLM_SERVER_URL") or slicer.util.settingsValue(
            SERVER_URL_SETTING, DEFAULT_SERVER_URL
        )
        session = SonoVLMLogic().open_session(url, client_id="sonovlm-selftest")
        try:
            summary = session.connect()
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
        case = session.next_case(summary.strategies[0] if summary.strategies else "random")
        self.assertIsNotNone(case, "the server has no unlabelled image to test with")
        self.assertEqual(case.volume.GetImageData().GetDimensions()[:2], (case.cols, case.rows))

        self.delayDisplay("Auto-segment")
        outcome = session.auto_segment(case, "auto")
        self.assertIn(outcome.organ, ORGAN_LABELS)
        segment = case.segmentation.GetSegmentation().GetSegment(outcome.segment_id)
        self.assertEqual(segment.GetName(), segment_name(outcome.organ))
        lines = slicer.util.getNodesByClass("vtkMRMLMarkupsLineNode")
        self.assertEqual(len(lines), 0 if outcome.measurement is None else 2)

        self.delayDisplay("Edit (a paint stroke through the Segment Editor's logic)")
        import numpy as np

        edited = np.zeros((case.rows, case.cols), np.uint8)
        edited[case.rows // 4 : case.rows // 2, case.cols // 4 : case.cols // 2] = 1
        edits = []
        observer = CaseObserver(case, on_edit=lambda: edits.append(1))
        session.scene_logic.apply_mask(case, edited, outcome.organ)
        observer.close()
        self.assertTrue(edits, "the edit was not observed")
        measurement = session.update_measurements(case, outcome.segment_id)
        self.assertIsNotNone(measurement)

        self.delayDisplay("Classify")
        classification = session.classify(case, outcome.organ)
        self.assertAlmostEqual(sum(score for _, score in classification.probabilities), 1.0, places=3)

        if os.environ.get("SONOVLM_SELFTEST_SUBMIT") == "1":
            self.delayDisplay("Submit")
            reply = session.submit(case, outcome.segment_id, "unknown")
            self.assertEqual(reply.get("image"), case.image_id)

        progress = session.training()
        self.assertIn(progress.state, ("IDLE", "SUBMITTED", "RUNNING", "DONE", "ERROR", "STOPPED"))
        self.delayDisplay("SonoVLM workflow test passed")
