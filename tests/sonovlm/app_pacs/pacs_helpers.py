"""Shared helpers of the PACS tests: upload the samples to an Orthanc, make asymmetric masks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from sonovlm.app.dicomweb import PacsClient
from sonovlm.io import save_mask

from tests.dicom_factory import cine_us_dicom, jpeg2000_us_dicom, us_dataset, write_dataset

SAMPLES = ("ExplVR_BigEnd.dcm", "examples_palette.dcm", "examples_rgb_color.dcm")


class Pacs:
    """The uploaded files of one test: ``files[name] = (path, SOP Instance UID)``."""

    def __init__(self, server, files: dict[str, tuple[Path, str]], ct_uid: str, patient_values: set[str]):
        self.server = server
        self.url = server.dicomweb_url
        self.files = files
        self.ct_uid = ct_uid
        self.patient_values = patient_values

    def uid(self, name: str) -> str:
        return self.files[name][1]

    def client(self) -> PacsClient:
        return PacsClient(self.url)

    def segs(self) -> list[pydicom.Dataset]:
        client = self.client()
        found = []
        for series in client.search_for_series(search_filters={"Modality": "SEG"}):
            ds = pydicom.Dataset.from_json(series)
            for inst in client.search_for_instances(ds.StudyInstanceUID, ds.SeriesInstanceUID):
                uid = pydicom.Dataset.from_json(inst).SOPInstanceUID
                data = client.instance_bytes(ds.StudyInstanceUID, ds.SeriesInstanceUID, uid)
                found.append(pydicom.dcmread(io.BytesIO(data)))
        return found


def upload(server, test_data: Path, workdir: Path) -> Pacs:
    """STOW the three real samples, a JPEG 2000 image, a cine loop and one CT image."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {name: test_data / name for name in SAMPLES}
    paths["j2k.dcm"] = jpeg2000_us_dicom(workdir / "j2k.dcm", seed=11)
    paths["cine.dcm"] = cine_us_dicom(workdir / "cine.dcm", n_frames=5, seed=12)
    ct = us_dataset(np.zeros((16, 16), np.uint8), seed=13)
    ct.Modality = "CT"
    ct_path = write_dataset(ct, workdir / "ct.dcm")
    client = PacsClient(server.dicomweb_url)
    files: dict[str, tuple[Path, str]] = {}
    patient_values: set[str] = set()
    for name, path in [*paths.items(), ("ct.dcm", ct_path)]:
        client.store_bytes(path.read_bytes())
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files[name] = (path, str(ds.SOPInstanceUID))
        for keyword in ("PatientID", "PatientName"):
            value = str(ds.get(keyword) or "").strip()
            if len(value) > 3:
                patient_values.add(value)
    return Pacs(server, files, files["ct.dcm"][1], patient_values)


def lesion_mask(rows: int, cols: int) -> np.ndarray:
    """An asymmetric lesion (an L shape), so that any transpose or flip shows."""
    mask = np.zeros((rows, cols), np.uint8)
    mask[rows // 4 : rows // 2, cols // 5 : cols // 2] = 1
    mask[rows // 2 : rows // 2 + rows // 8, cols // 5 : cols // 5 + cols // 10] = 1
    return mask


def write_png(path: Path, mask: np.ndarray) -> str:
    save_mask(path, mask)
    return str(path)
