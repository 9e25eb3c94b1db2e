"""Fixtures of the PACS tests: a real Orthanc (skips with the reason when it is not installed)."""

from tests.orthanc_fixture import orthanc  # noqa: F401  (session fixture used by the tests here)
