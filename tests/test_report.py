"""benchmarks/report.py: every generated README table equals what its committed result files
render to, a missing file or an unknown kind is refused, and a changed figure is noticed."""

import json
import shutil

import pytest

from benchmarks import report
from nano.errors import NanoError

README = (report.ROOT / "README.md").read_text()


def test_readme_tables_match_their_results():
    found = report.tables(README)
    assert {kind for kind, _, _ in found} >= {"export_bench", "nano1_plan", "prune"}, "README.md lost a generated table"
    for kind, paths, body in found:
        for p in paths:
            assert (report.ROOT / p).is_file(), f"README table {kind}: {p} is not committed"
        assert body == report.render(kind, paths), (
            f"README table {kind} differs from {', '.join(paths)}; run `python -m benchmarks.report`")


def test_every_table_names_its_machine_and_date():
    for kind, paths, body in report.tables(README):
        prov = json.loads((report.ROOT / paths[0]).read_text())["provenance"]
        assert prov["machine"]["cpu"] in body and prov["date"][:10] in body and prov["git_sha"][:10] in body, kind


def _tree(tmp_path, kind="export_bench"):
    """A README with one table of `kind` over a copy of its committed result file."""
    paths = next(paths for k, paths, _ in report.tables(README) if k == kind)
    for p in paths:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(report.ROOT / p, tmp_path / p)
    marker = f"<!-- table: {kind} ({', '.join(paths)}) -->\n"
    return marker + "old\n<!-- end table -->\n", paths


def test_changed_figure_makes_the_table_stale(tmp_path):
    text, paths = _tree(tmp_path)
    fresh = report.regenerate(text, tmp_path)
    assert report.regenerate(fresh, tmp_path) == fresh  # rendering is stable
    data = json.loads((tmp_path / paths[0]).read_text())
    model = next(k for k in data if k != "provenance")
    run = next(iter(data[model]["bench"].values()))["result"]
    run["runtimes"]["llama_cpp"]["rows"][0]["decode_tok_s"] *= 3  # one figure in the JSON changes
    (tmp_path / paths[0]).write_text(json.dumps(data))
    assert report.regenerate(fresh, tmp_path) != fresh


def test_missing_result_file_is_refused(tmp_path):
    text = "<!-- table: nano1_plan (benchmarks/results/gone.json) -->\nx\n<!-- end table -->\n"
    with pytest.raises(NanoError, match=r"gone\.json: result file missing; run the benchmark"):
        report.regenerate(text, tmp_path)


def test_unknown_kind_is_refused(tmp_path):
    text = "<!-- table: guesswork (benchmarks/results/x.json) -->\nx\n<!-- end table -->\n"
    with pytest.raises(NanoError, match="kind 'guesswork' has no renderer; use one of export_bench"):
        report.regenerate(text, tmp_path)
