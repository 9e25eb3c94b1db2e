"""The private framework members the app relies on (sonovlm.app.compat) still exist with the
parameters it expects: an upgrade of MONAI Label or dicomweb-client that renames or reshapes one
fails here, naming it, instead of deep inside a request."""

from __future__ import annotations

import inspect

import pytest
from monailabel.datastore.local import LocalDatastore
from sonovlm.app import compat
from sonovlm.app.datastore import SonoDatastore
from sonovlm.app.pacs_client import PacsClient
from sonovlm.app.train_base import SonoTrainer


def _ids(entry) -> str:
    return f"{entry[0].__name__}.{entry[1]}"


def _assigned_in_source(owner: type, name: str) -> bool:
    """Whether some method of ``owner`` (or a base in the framework) assigns ``self.<name>``."""
    for klass in owner.__mro__:
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if f"self.{name} =" in source or f"self.{name}: " in source:
            return True
    return False


@pytest.mark.parametrize("entry", compat.PRIVATE_MEMBERS, ids=_ids)
def test_private_member_is_where_the_app_expects_it(entry):
    owner, name, parameters = entry
    if parameters is None:
        assert _assigned_in_source(owner, name), f"{owner.__name__} no longer sets self.{name}"
        return
    member = inspect.getattr_static(owner, name)
    function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
    assert tuple(inspect.signature(function).parameters) == parameters


@pytest.mark.parametrize("name", compat.LOCAL_DATASTORE_ATTRIBUTES)
def test_local_datastore_index_attributes(name):
    assert _assigned_in_source(LocalDatastore, name)


def test_the_overrides_come_from_compat_and_reach_our_public_methods():
    assert SonoTrainer._device is compat.TrainTaskCompat._device
    assert SonoTrainer._create_trainer is compat.TrainTaskCompat._create_trainer
    assert SonoTrainer._create_evaluator is compat.TrainTaskCompat._create_evaluator
    assert SonoDatastore._init_from_datastore_file is compat.LocalDatastoreCompat._init_from_datastore_file
    assert issubclass(PacsClient, compat.DICOMwebClientCompat)
    for klass, public in (
        (SonoTrainer, ("training_device", "build_trainer", "build_evaluator")),
        (SonoDatastore, ("reload_index",)),
    ):
        for method in public:
            assert getattr(klass, method) is not getattr(compat.TrainTaskCompat, method, None)
            assert getattr(klass, method) is not getattr(compat.LocalDatastoreCompat, method, None)


def test_no_other_module_of_the_app_overrides_a_private_framework_method():
    """Overrides of the framework's private methods are defined in compat.py only."""
    import re
    from pathlib import Path

    app_dir = Path(compat.__file__).parent
    names = [name for _, name, parameters in compat.PRIVATE_MEMBERS if parameters is not None]
    pattern = re.compile(r"^\s+def (" + "|".join(map(re.escape, names)) + r")\(", re.M)
    offenders = [
        f"{path.name}: {match.group(1)}"
        for path in sorted(app_dir.glob("*.py"))
        if path.name != "compat.py"
        for match in pattern.finditer(path.read_text())
    ]
    assert not offenders, offenders
    assert "_Transaction" not in (app_dir / "pacs_client.py").read_text()
