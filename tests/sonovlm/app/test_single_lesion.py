"""The served segmentation mask is the lesion that is measured (issue 15 item 2): MONAI's
KeepLargestConnectedComponent + FillHoles on a two-blob mask, and the param that turns it off."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
from fastapi import HTTPException
from sonovlm.app.infer import SegmentationTask, single_lesion
from sonovlm.io import load_image, load_mask
from sonovlm.measure import measure_lesion
from sonovlm.model.inference import SegmentationResult

from tests.dicom_factory import RegionSpec, bmode_frame, us_dataset, write_dataset

ROWS, COLS = 60, 80
SPACING = (0.2, 0.3)


def two_blobs(label: int = 3) -> np.ndarray:
    """A large blob with a hole (a cyst wall, say) and a smaller one apart from it."""
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[10:40, 10:40] = label
    mask[20:25, 20:26] = 0  # the hole
    mask[45:55, 55:70] = label  # the second blob
    return mask


def test_single_lesion_is_what_measure_measures():
    raw = two_blobs()
    served = single_lesion(raw, 3)
    expected = np.zeros_like(raw)
    expected[10:40, 10:40] = 3
    np.testing.assert_array_equal(served, expected)
    measured_raw, measured_served = measure_lesion(raw, SPACING), measure_lesion(served, SPACING)
    assert measured_raw.components == 2 and measured_served.components == 1
    assert measured_raw.area_px == measured_served.area_px == int((served != 0).sum())
    assert measured_raw.to_dict() == measured_served.to_dict() | {"components": 2}
    assert not single_lesion(np.zeros((4, 4), np.uint8), 1).any()


class _Registry:
    """The registry surface SegmentationTask uses, with a predictor that answers ``mask``."""

    def __init__(self, mask: np.ndarray) -> None:
        from sonovlm.app.frames import ImageCache

        self.images = ImageCache()
        self.mask = mask

    def info(self):
        return {}

    @contextmanager
    def inference(self, background: bool = False):
        outer = self

        class _Predictor:
            model_version = "test-1"
            model_card = None

            def segment(self, image, organ, prompt=None, frame=None):
                return SegmentationResult(
                    mask=outer.mask,
                    probability=(outer.mask != 0).astype(np.float32),
                    confidence=0.9,
                    organ=organ,
                    prompt=prompt,
                    frame=frame or 0,
                )

        yield _Predictor()


@pytest.fixture
def image_path(tmp_path):
    ds = us_dataset(
        bmode_frame(ROWS, COLS, seed=1, text=False),
        regions=[RegionSpec((0, 0, COLS - 1, ROWS - 1), spacing_mm=SPACING)],
    )
    return str(write_dataset(ds, tmp_path / "two_blobs.dcm"))


@pytest.mark.parametrize("single", [None, True, "false"])
def test_the_reply_mask_equals_the_measured_lesion(image_path, single):
    task = SegmentationTask(_Registry(two_blobs()), lambda image_id: None)
    params = {"image": image_path, "organ": "thyroid_nodule", "result_extension": ".png"}
    if single is not None:
        params["single_lesion"] = single
    data = task.run_inferer(task._load_frame(dict(params)))
    path, reply = task.writer(data)
    served = load_mask(path)
    measured = reply["measurements"]
    if single == "false":  # every component kept; the measurement still names the largest
        np.testing.assert_array_equal(served, two_blobs())
        assert reply["single_lesion"] is False and measured["components"] == 2
        assert reply["lesion_pixels"] > measured["area_px"]
    else:
        assert reply["single_lesion"] is True and measured["components"] == 1
        assert reply["lesion_pixels"] == measured["area_px"] == int((served != 0).sum())
        offline = measure_lesion(served, load_image(image_path).spacing_mm).to_dict()
        assert offline == measured and offline["area_px"] == measure_lesion(two_blobs(), SPACING).area_px


def test_a_bad_single_lesion_param_is_422(image_path):
    task = SegmentationTask(_Registry(two_blobs()), lambda image_id: None)
    data = task._load_frame({"image": image_path, "organ": "thyroid_nodule", "single_lesion": "maybe"})
    with pytest.raises(HTTPException) as caught:
        task.run_inferer(data)
    assert caught.value.status_code == 422 and "single_lesion" in caught.value.detail
