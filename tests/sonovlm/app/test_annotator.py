"""The signed-in user is the label's annotator when access control is on (``sonovlm.app.annotator``)."""

from __future__ import annotations

import inspect
import json

import pytest
from fastapi import HTTPException
from sonovlm.app.annotator import annotated_params, install_annotator_record


def test_auth_on_records_the_token_user_and_keeps_the_claim():
    params = json.loads(annotated_params(json.dumps({"organ": "breast_lesion", "user": "eve"}), "ann", True))
    assert params == {"organ": "breast_lesion", "user": "ann", "client_user": "eve"}
    assert json.loads(annotated_params("", "ann", True)) == {"user": "ann"}
    assert "client_user" not in json.loads(annotated_params('{"user": "ann"}', "ann", True))


def test_auth_off_leaves_the_clients_params_alone():
    """MONAI Label's user is the placeholder 'admin' for everyone without auth."""
    raw = json.dumps({"organ": "thyroid_nodule", "user": "sonographer-1"})
    assert annotated_params(raw, "admin", False) == raw


@pytest.mark.parametrize(("params", "message"), [("{not json", "not valid JSON"), ("[1]", "JSON object")])
def test_bad_params_are_422_naming_params(params, message):
    with pytest.raises(HTTPException) as caught:
        annotated_params(params, "ann", True)
    assert caught.value.status_code == 422 and caught.value.detail.startswith("params: ")
    assert message in caught.value.detail


def test_install_wraps_monai_labels_endpoint_function_once():
    from monailabel.endpoints import datastore as endpoints

    original = endpoints.save_label
    try:
        install_annotator_record()
        wrapped = endpoints.save_label
        install_annotator_record()
        assert endpoints.save_label is wrapped and wrapped._sonovlm_annotator
        # The route calls save_label(background_tasks, image, params, tag, label, user) positionally.
        source = inspect.getsource(endpoints.api_save_label)
        assert "save_label(background_tasks, image, params, tag, label, user.username)" in source
    finally:
        endpoints.save_label = original
