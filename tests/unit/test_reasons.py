"""The one table of drop reasons: every reason curation can give is in it, and nothing else spells one."""

import ast
from pathlib import Path

from pipelines.curate import dedup, formats, reasons, select
from pipelines.curate.decontaminate import ContaminationFilter
from pipelines.curate.filters import Filter
from pipelines.curate.report import format_report
from pipelines.demo.sample_data import DEFECT_KINDS

REPO = Path(__file__).resolve().parents[2]


def _filter_classes(cls=Filter):
    for sub in cls.__subclasses__():
        yield sub
        yield from _filter_classes(sub)


def test_every_reason_curation_gives_is_in_the_table_and_every_entry_is_given():
    given = {cls.reason for cls in _filter_classes()}
    given |= {formats.MALFORMED, dedup.EXACT_DUPLICATE, dedup.NEAR_DUPLICATE, select.BELOW_TOP_K, select.NOT_DIVERSE,
              select.OVER_SOURCE_CAP, select.OVER_SOURCE_WEIGHT,
              reasons.TEMPLATE_ERROR}  # the length filter's second verdict: a row the chat template cannot render
    assert ContaminationFilter.reason in given
    assert given == set(reasons.REASONS)
    assert all(meaning and "\n" not in meaning for meaning in reasons.REASONS.values())


def test_filters_have_distinct_names():
    names = [cls.name for cls in _filter_classes()]
    assert len(names) == len(set(names))


def test_every_planted_defect_is_a_reason():
    assert set(DEFECT_KINDS) <= set(reasons.REASONS)


def test_the_report_prints_each_reasons_meaning():
    dropped = {reason: count for count, reason in enumerate(reasons.REASONS, start=1)}
    report = format_report(200, 95, dropped, {reasons.MALFORMED: "alpaca:3 (not JSON)"})
    for reason, meaning in reasons.REASONS.items():
        line = next(line for line in report.splitlines() if line.split()[0] == reason)
        assert meaning in line and str(dropped[reason]) in line
    assert "alpaca:3 (not JSON)" in report


def test_no_module_spells_a_reason_outside_the_table():
    files = [*(REPO / "pipelines" / "curate").glob("*.py"), REPO / "pipelines" / "bench" / "curate.py",
             REPO / "pipelines" / "demo" / "sample_data.py"]
    spelled = [(path.name, node.value) for path in files if path.name != "reasons.py"
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and node.value in reasons.REASONS]
    assert spelled == []
