"""Team decision next to tool proposal in the worksheet and the dashboard, with agreement figures
(issue 14 item 4); the report only reads RESULTS/review/."""

from __future__ import annotations

import hashlib
import re

import pytest

from pipeline.review import agreement as A
from pipeline.review import store


def test_pair_and_agreement_known_truth():
    tool = [{"role": "inject", "measurable": "True"}, {"role": "monitor", "measurable": "True"},
            {"role": "none", "measurable": "False"}, {"role": "inject", "measurable": "False"},
            {"role": "monitor", "measurable": "True"}]
    team = [{"role": "inject", "category": "T-I"},              # agrees (role, category)
            {"role": "inject", "category": "T-I", "reason": "board"},  # role and category differ
            {"role": "", "category": "NT-NI"},                   # category only, agrees
            None,                                               # undecided
            {"role": "monitor", "category": "NT-NI", "reason": "r"}]   # role agrees, category differs
    pairs = [A.pair(t, d) for t, d in zip(tool, team)]
    assert [p.tool_category for p in pairs] == ["T-I", "T-NI", "NT-NI", "NT-I", "T-NI"]
    assert [p.role_agrees for p in pairs] == [True, False, None, None, True]
    assert [p.category_agrees for p in pairs] == [True, False, True, None, False]
    a = A.agreement(pairs, ["dr x"])
    assert (a.n_lesions, a.n_role_decided, a.n_role_agree) == (5, 3, 2)
    assert a.role_agreement_pct == pytest.approx(200 / 3)
    assert (a.n_category_decided, a.n_category_agree) == (4, 2) and a.category_agreement_pct == 50.0
    # over the 4 lesions with a team category: tool T-I 1, T-NI 2, NT-NI 1; team T-I 2, NT-NI 2
    assert a.categories == {"T-I": (1, 2), "T-NI": (2, 0), "NT-I": (0, 0), "NT-NI": (1, 2)}
    assert a.changed == {"monitor -> inject": 1} and a.signed_off_by == ("dr x",)
    assert A.agreement([]).role_agreement_pct is None and A.pct_text(None) == "–"


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.slow
def test_worksheet_and_dashboard_show_team_decisions(fresh_results):
    from pipeline.report.dashboard import write_dashboard
    from pipeline.report.run import report_study

    res = fresh_results
    sheet = store.read_study_sheet(res)
    s = sheet[0]
    pid, suid = s["patient_id"], s["study_uid"]
    ws = store.study_dir(res, pid, suid) / "worksheet.html"
    # without decisions.csv: no team column
    report_study(res, s["patient_dir"], s["study_dir"], sr=False)
    assert "Team decision" not in ws.read_text()
    props = store.study_proposals(res, pid, suid)
    lids = sorted(props)
    same, other = lids[0], lids[1]
    p_other = props[other]
    new_role = "monitor" if p_other.role.value != "monitor" else "inject"
    store.record_decision(res, reader="dr a", patient_id=pid, study_uid=suid, lesion_id=same,
                          role=props[same].role.value, category=props[same].category.value)
    store.record_decision(res, reader="dr a", patient_id=pid, study_uid=suid, lesion_id=other,
                          role=new_role, category="T-NI" if new_role == "monitor" else "T-I",
                          planned_volume_ml=2.0 if new_role == "inject" else None,
                          reason="<b>board</b> prefers it")
    before = _digest(store.review_dir(res))
    report_study(res, s["patient_dir"], s["study_dir"], sr=False)
    html = ws.read_text()
    text = _text(html)
    assert 'id="team"' in html and "Tool proposal" in html and "Team decision" in html
    # 2 decided roles, 1 equal to the tool's: 50 %; same for categories
    assert "Role agreement 50 % (1 of 2 decided roles" in text, text[:3000]
    assert "Category agreement 50 % (1 of 2)" in text
    assert f"{p_other.role.value} -&gt; {new_role}: 1" in html or f"{p_other.role.value} -> {new_role}: 1" in text
    assert "&lt;b&gt;board&lt;/b&gt; prefers it" in html  # the reason is escaped text
    assert html.count("undecided") == len(props) - 2
    assert "not yet" in text  # not signed off
    # sign off: every proposal lesion gets a decision equal to the tool's -> agreement (n-1)/n
    store.sign_off(res, reader="dr b", patient_id=pid, study_uid=suid)
    before = _digest(store.review_dir(res))
    report_study(res, s["patient_dir"], s["study_dir"], sr=False)
    n = len(props)
    text = _text(ws.read_text())
    assert f"Role agreement {100 * (n - 1) / n:.0f} % ({n - 1} of {n} decided roles" in text
    assert "Signed off dr b" in text
    dash = write_dashboard(res).read_text()
    dtext = _text(dash)
    total = sum(len(store.study_proposals(res, r["patient_id"], r["study_uid"])) for r in sheet)
    assert 'id="team"' in dash and "Team decision" in dash
    assert f"Role agreement {100 * (n - 1) / n:.0f} % ({n - 1} of {n} decided roles; {total} lesions proposed)" in dtext
    assert f"1 of {len(sheet)} studies signed off" in dtext
    assert f"{n - 1} of {n} roles" in dtext and "signed off by dr b" in dtext
    assert _digest(store.review_dir(res)) == before  # the report only reads RESULTS/review/
