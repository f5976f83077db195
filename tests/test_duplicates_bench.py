"""benchmarks/duplicates.py: the stages are timed and the edit and threshold tables are filled on a
tiny planted folder (the script's numbers end up in docs/data.md)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import make_planted_folder

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "duplicates.py"


def test_duplicates_benchmark_reports_stages_edits_and_thresholds(tmp_path):
    root = make_planted_folder(tmp_path / "mri")
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(SCRIPT), str(root), "--size", "96", "--edits", "4",
                    "--thresholds", "0", "4", "--json", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert set(result["seconds"]) == {"discover", "signatures", "groups", "report", "clean_split"}
    assert result["groups"]["test_with_twin_in_train"] == 5 and result["files"] == 4 * 13 + 5
    assert set(result["thresholds"]) == {"0", "4"} and result["thresholds"]["4"]["groups"] == 5
    jpeg = result["edits"]["jpeg q50"]
    assert len(result["edits"]) == 10 and jpeg["within 6"] >= jpeg["within 4"] >= jpeg["within 2"]
    assert result["clean_test"] == result["official_test"]  # the groups allow the official sizes here
