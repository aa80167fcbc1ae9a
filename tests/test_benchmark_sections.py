"""Generated benchmark sections say what their stored numbers say: KE Table 2's findings follow the numbers (no
fixed sentence), and the foundation section is written again from its stored measurements."""

from benchmarks import foundation, ke_table2


def result(method, last, generations=1, baseline=False, per_generation=None):
    return {"method": method, "generations": generations, "epochs": 3, "baseline": baseline, "last": last,
            "per_generation": per_generation or [[v] for v in last]}


def table(ke_n2, cskd, base):
    ce = [0.60, 0.61, 0.62]
    return [result("ce", ce), result("cskd", cskd),
            result("ke", ke_n2, 2, per_generation=[[c, k] for c, k in zip(ce, ke_n2)]),
            result("ce", base, baseline=True)]


def test_findings_name_a_row_that_beats_ke():
    text = ke_table2.findings(table([0.70, 0.71, 0.72], [0.80, 0.81, 0.82], [0.60, 0.605, 0.61]), 2)[0]
    assert "above every" not in text
    assert "below `cskd`" in text and "above `ce` by more than 2 SE" in text
    assert "more than the extra epochs give" in text  # KE 71 against the equal-compute baseline's 60.5


def test_findings_when_everything_is_close():
    text = ke_table2.findings(table([0.60, 0.70, 0.65], [0.60, 0.70, 0.65], [0.60, 0.70, 0.65]), 2)[0]
    assert "within 2 SE of `ce`, `cskd`" in text
    assert "cannot tell whether the extra epochs explain" in text


def test_findings_when_ke_wins_everywhere_but_not_against_equal_compute():
    text = ke_table2.findings(table([0.70, 0.71, 0.72], [0.60, 0.61, 0.62], [0.80, 0.81, 0.82]), 2)[0]
    assert "above every single-run row by more than 2 SE (`ce`, `cskd`)" in text
    assert "is above KE N_2 by 10.00 ± 0.82 points" in text  # (81 - 71) and sqrt(2 x 1^2 / 3)


def test_foundation_section_is_written_from_stored_measurements():
    data = {"env": {"torch": "2.13.0+cpu", "threads": 1, "date": "2026-12-07", "reps": 3, "minutes": 12.4,
                    "load": 3.46, "cores": 2},
            "speed": [["cnn-digits", 250.4, 240.6, [0.9, 1.0, 1.1]]],
            "load": [["cnn-digits", 4.041, 247.33, [0.01, 0.02, 0.03]]],
            "checkpoint": [["cnn-digits", [0.0003, 0.0004, 0.0005], [0.01, -0.02, 0.03]]]}
    lines = foundation.render(data)
    assert lines[0].startswith("Written by `python -m benchmarks.foundation` (torch 2.13.0+cpu, 1 thread, "
                               "2026-12-07, 3 interleaved repetitions, 12 min, load average 3.5 on 2 cores at the "
                               "end).")
    assert "| cnn-digits | 250 | 241 | **1.0** (0.90–1.10) |" in lines
    assert "| cnn-digits | 4.04 | 247.3 | **2%** (1.0–3.0) |" in lines
