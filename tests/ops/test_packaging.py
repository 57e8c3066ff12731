"""pyproject.toml reads without setuptools deprecation warnings: `make install` printed 135 lines of
`project.license` warnings (issue 24, item 8) that a user reads as a failed install."""
import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

REPO = Path(__file__).resolve().parents[2]


def test_the_project_metadata_applies_without_deprecation_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    about_project = [str(w.message).splitlines()[0] for w in caught if "project" in str(w.message)]
    assert about_project == []
    assert dist.metadata.license_expression == "Apache-2.0"
