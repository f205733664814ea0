"""Summarizes a pytest run of kafka-python's integration tests.

    summarize.py JUNIT_XML PYTEST_LOG

Prints one line per failing test (name: first line of its error), the
skip reasons with counts, and last a line
    RESULT PASSED FAILED SKIPPED name...
Names are MODULE::TEST with MODULE the file's name without test_ and
_integration (admin::test_elect_leaders). A test that failed and also
errored in teardown counts once. Without the JUnit file (pytest killed by
the outer timeout) the -v lines of the log are counted instead, and the test
that was running is named as failed."""

import collections
import os
import re
import sys
import xml.etree.ElementTree as ET


def short(module, name):
    # A JUnit classname (test.integration.test_admin_integration) or a path
    # from pytest -v (test/integration/test_admin_integration.py).
    module = module.removesuffix(".py").replace("/", ".").rsplit(".", 1)[-1]
    module = module.removeprefix("test_").removesuffix("_integration")
    return f"{module}::{name}"


def first_line(text):
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return ""


def from_junit(path):
    results = collections.OrderedDict()  # name -> (status, detail)
    for case in ET.parse(path).getroot().iter("testcase"):
        name = short(case.get("classname", ""), case.get("name", ""))
        status, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                if status != "failed":
                    status = "failed"
                    detail = first_line(child.get("message")) or first_line(child.text)
                    if child.tag == "error":
                        detail = f"[{first_line(child.get('message'))[:40]}] " + \
                            last_error_line(child.text)
            elif child.tag == "skipped" and status == "passed":
                status = "skipped"
                detail = first_line(child.get("message"))
        results[name] = (status, detail)
    return results


def last_error_line(text):
    """The E-line of a pytest traceback that names the exception."""
    lines = [l[1:].strip() for l in (text or "").splitlines() if l.startswith("E ")]
    for l in lines:
        if re.match(r"^[\w.]+(Error|Exception|Timeout|Failed)\b", l):
            return l[:300]
    return (lines[0] if lines else first_line(text))[:300]


LINE = re.compile(r"^(\S+\.py)::(\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def from_log(path):
    results = collections.OrderedDict()
    running = None
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                name = short(m.group(1), m.group(2))
                status = {"PASSED": "passed", "XPASS": "passed", "SKIPPED": "skipped",
                          "XFAIL": "skipped"}.get(m.group(3), "failed")
                if results.get(name, ("",))[0] != "failed":
                    results[name] = (status, "")
                running = None
            else:
                m2 = re.match(r"^(\S+\.py)::(\S+) ", line)
                if m2:
                    running = short(m2.group(1), m2.group(2))
    if running and running not in results:
        results[running] = ("failed", "still running when pytest was killed")
    return results


def main():
    junit, log = sys.argv[1], sys.argv[2]
    if os.path.exists(junit) and os.path.getsize(junit) > 0:
        results = from_junit(junit)
    else:
        print("no JUnit report (pytest killed?); counting the -v lines of the log")
        results = from_log(log) if os.path.exists(log) else {}
    counts = collections.Counter(s for s, _ in results.values())
    failing = [n for n, (s, _) in results.items() if s == "failed"]
    for n in failing:
        print(f"FAIL {n}: {results[n][1]}")
    skips = collections.Counter(d for s, d in results.values() if s == "skipped")
    for reason, k in skips.most_common():
        print(f"SKIP x{k}: {reason}")
    print("RESULT", counts["passed"], counts["failed"], counts["skipped"], *failing)


if __name__ == "__main__":
    main()
