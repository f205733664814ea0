#!/usr/bin/env python3
"""Helpers for 20-franz-go.sh (standard library only).

  kgo_tests.py list DIR
      Prints a `go test -run` pattern selecting the top-level tests of the
      package in DIR that talk to a broker: their bodies use the helpers of
      helpers_test.go that connect to KGO_SEEDS (newTestClient, adm(),
      tmpTopic..., tmpGroup, testChainETL).

  kgo_tests.py summarize JSON TEXT
      Reads the `go test -json` stream JSON, writes its plain output to TEXT
      and prints, for every failing test, its t.Log/t.Error lines and the
      last lines of its output (franz-go's client log goes there too), then
      one line: "RESULT P F S name...". Every top-level test and subtest
      counts; a test that started but never ended (timeout, panic) counts as
      failed, and so does a package failure outside any test ("(package)").
"""
import json
import re
import sys

BROKER_HELPERS = ("newTestClient(", "adm()", "tmpTopic(", "tmpTopicPartitions(",
                  "tmpNamedTopicPartitions(", "tmpGroup(", "tmpShareGroup(",
                  "testChainETL(")
EXCERPT_LINES = 15      # last lines of a failing test's output
LOG_LINES = 25          # and its first t.Log/t.Error lines (file_test.go:N:)


def list_tests(directory):
    import glob
    import os
    names = []
    for path in sorted(glob.glob(os.path.join(directory, "*_test.go"))):
        with open(path, encoding="utf-8") as f:
            src = f.read()
        for chunk in re.split(r"\n(?=func )", src):
            m = re.match(r"func (Test\w*)\(\w+ \*testing\.T\)", chunk)
            if m and any(h in chunk for h in BROKER_HELPERS):
                names.append(m.group(1))
    if not names:
        sys.exit("no integration tests found in " + directory)
    print("^(" + "|".join(names) + ")$")


def summarize(json_path, text_path):
    status = {}          # test name -> pass/fail/skip/None (running)
    order = []
    output = {}          # test name -> [lines]
    pkg_failed = False
    pkg_output = []
    with open(json_path, encoding="utf-8", errors="replace") as f, \
            open(text_path, "w", encoding="utf-8") as text:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                text.write(line + "\n")
                pkg_output.append(line)
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            action, test = ev.get("Action"), ev.get("Test")
            out = ev.get("Output")
            if out is not None:
                text.write(out)
                (output.setdefault(test, []) if test else pkg_output).extend(
                    out.rstrip("\n").split("\n"))
            if not test:
                if action in ("fail", "build-fail"):
                    pkg_failed = True
                continue
            if action == "run" and test not in status:
                status[test] = None
                order.append(test)
            elif action in ("pass", "fail", "skip"):
                if test not in status:
                    order.append(test)
                status[test] = action
    passed = [t for t in order if status[t] == "pass"]
    skipped = [t for t in order if status[t] == "skip"]
    failed = [t for t in order if status[t] in ("fail", None)]
    for t in failed:
        how = "did not finish" if status[t] is None else "FAILED"
        lines = output.get(t, [])
        for i, l in enumerate(lines):   # drop a timeout's goroutine dump
            if l.startswith("panic: "):
                lines = lines[:i + 4]
                break
        logged = [l for l in lines if re.match(r"\s+\w+_test\.go:\d+: ", l)]
        print(f"----- {t}: {how}; its test log lines, then its last lines:")
        for l in logged[:LOG_LINES] + ["..."] + lines[-EXCERPT_LINES:]:
            print("    " + l[:300])
    if pkg_failed and not failed:
        failed.append("(package)")
        print("----- the package failed outside any test; last lines:")
        for l in pkg_output[-EXCERPT_LINES:]:
            print("    " + l[:300])
    print("RESULT", len(passed), len(failed), len(skipped), *failed)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "list":
        list_tests(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "summarize":
        summarize(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
