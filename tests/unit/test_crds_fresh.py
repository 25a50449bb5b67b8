"""crds/ must be exactly what `python -m rewind.crdgen` generates from the models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from rewind import crdgen

ROOT = Path(__file__).resolve().parents[2]


def test_crds_dir_is_fresh() -> None:
    stale = crdgen.stale_files(ROOT / "crds")
    assert not stale, f"stale CRDs, run `make crds`: {[str(p) for p in stale]}"


def test_generated_files_are_the_three_crds() -> None:
    files = crdgen.generate()
    assert set(files) == {
        "modelreleases.rewind.dev.yaml",
        "rolloutpolicies.rewind.dev.yaml",
        "quarantines.rewind.dev.yaml",
    }
    for name, text in files.items():
        doc = yaml.safe_load(text)
        assert doc["kind"] == "CustomResourceDefinition"
        assert f"{doc['metadata']['name']}.yaml" == name
        assert doc["spec"]["group"] == "rewind.dev"
        assert [v["name"] for v in doc["spec"]["versions"]] == ["v1alpha1"]


def test_generation_is_deterministic() -> None:
    assert crdgen.generate() == crdgen.generate()


def test_check_detects_missing_and_edited_files(tmp_path: Path) -> None:
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1  # nothing written yet
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 0
    target = tmp_path / "rolloutpolicies.rewind.dev.yaml"
    target.write_text(target.read_text().replace("maxItems: 20", "maxItems: 21", 1))
    assert crdgen.stale_files(tmp_path) == [target]
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1


def test_check_cli_lists_stale_files(tmp_path: Path) -> None:
    crdgen.main(["--out", str(tmp_path)])
    (tmp_path / "modelreleases.rewind.dev.yaml").write_text("# edited by hand\n")
    result = subprocess.run(
        [sys.executable, "-m", "rewind.crdgen", "--check", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "modelreleases.rewind.dev.yaml" in result.stderr
    assert "rolloutpolicies" not in result.stderr
