"""A small classroom against a live app (`ui.load_test`, the benchmark's own clients): sessions on
one shared URL, each changing k and the selector at once, each sees only its own settings."""

from ui import load_test


def test_concurrent_sessions_each_see_their_own_settings(app_url):
    sessions = len(load_test.CHANGES) + 1  # two sessions make the same change, the others differ
    figures = load_test.run_load_test(app_url, sessions)
    assert figures["problems"] == {}, figures["problems"]
    assert figures["teacher_status"] == 0
    assert figures["all_rendered_within_s"] is not None
    assert figures["changes"] == 2 * sessions  # a k change, then a selector change, per session


def test_the_isolation_check_catches_another_sessions_settings():
    report = load_test.SessionReport(0)
    leaked = load_test.RunOutcome(0.1, 0, "k=6&selector=window", {"heads × k": "4 × 6"}, {}, 0)
    load_test._check(leaked, {"k": "4", "selector": "cosine"}, "4", report, "k change")
    assert len(report.problems) == 3  # k and selector in the URL, and the k the page shows
