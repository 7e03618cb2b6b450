"""The installed package exposes the documented entry points."""
import subprocess
import sys


def test_python_m_pipeline_shows_help():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True)
    assert "phantom" in out.stdout and "validate-data" in out.stdout


def test_layout_packages_import():
    import data, pipeline, segmentation, synthesis  # noqa: F401
