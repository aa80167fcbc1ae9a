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


def detection_results():
    def r(img_s, peak, growth, precision="fp32"):
        return {"img_s": img_s, "peak_rss_mb": peak, "growth_mb": growth, "precision": precision}

    return {"ce": [r(4.0, 1000, 100), r(4.4, 1010, 110), r(4.2, 1020, 120)],
            "ktan": [r(2.0, 1500, 200), r(2.0, 1510, 210), r(2.1, 1520, 220)],
            "eval": [r(30.0, 800, 0), r(31.0, 800, 0), r(32.0, 800, 0)]}


def test_detection_section_states_what_it_measured():
    from benchmarks import detection

    lines = detection.render(detection_results(), reps=3, steps=10, device="cpu", minutes=12.4,
                             torch_version="2.14.1", date="2026-12-07", load="load average 3.5 on 2 cores at the end")
    text = "\n".join(lines)
    assert lines[2].startswith("`python -m benchmarks.detection --reps 3 --steps 10` with the vision environment "
                               "(torch 2.14.1, 2026-12-07, 1 thread, device cpu, precision fp32 for training, "
                               "evaluation always fp32 by design")
    assert "| training, plain step (`method=ce`) | 4.2 (4.00–4.40) | 1010 | +110 |" in lines
    assert "| training, KTAN step (`method=ktan`, teacher) | 2.0 (2.00–2.10) | 1510 | +210 |" in lines
    # the ratio per repetition: 4.0/2.0, 4.4/2.0, 4.2/2.1 -> 2.0, 2.2, 2.0
    assert "KTAN step time / plain step time (computed per repetition): **2.0x** (2.00–2.20)" in text
    assert "ru_maxrss" in text and "ktan.regressor_epochs=0" in text and "ktan.mse_epochs=0" in text


def test_detection_benchmark_without_torchvision_is_one_line_exit_2(monkeypatch, capsys):
    import importlib.util

    from benchmarks import detection

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    assert detection.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs torchvision" in err
