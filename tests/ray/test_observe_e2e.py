"""Seeing the work, end to end on one real local Ray with the Serve gateway on loopback: lineage (route and
file transport), OTLP traces, the graph route, the web UI in headless Chromium, `fabric graph` and
`fabric logs --follow`, and both notebooks executed on a fresh kernel."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve.auth import mint_token
from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def browser_page(**page_options: Any) -> Iterator[Any]:
    """A page of headless Debian chromium, closed whatever the test did."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page(**page_options)
        finally:
            browser.close()

FAILING = {
    "version": 1, "pipeline_id": "ui_failing",
    "nodes": [
        {"id": "start", "kind": "python_task", "entrypoint": "tests.nodes:value", "params": {"x": 2.0}},
        {"id": "broken", "kind": "python_task", "entrypoint": "tests.nodes:boom",
         "params": {"message": "the join lost every row"},
         "slo": {"retry": {"max_attempts": 2, "backoff_sec": 0.2}}},
        {"id": "after", "kind": "python_task", "entrypoint": "tests.nodes:noop"},
    ],
    "edges": [{"from": "start", "to": "broken"}, {"from": "broken", "to": "after"}],
}


class _Otlp(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802
        self.bodies.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_):
        pass


@pytest.fixture(scope="module")
def otlp():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Otlp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Otlp.bodies
    server.shutdown()


@pytest.fixture(scope="module")
def stack(fabric_home, otlp, tmp_path_factory):
    """Ray (its registry sends traces to the OTLP receiver above, lineage to the default file), the gateway,
    and two finished submissions: the example pipeline (all green) and one whose node fails after a retry."""
    import ray
    from ray import serve

    import fabric as fb
    from fabric.cli.gateway import start_gateway

    saved = {k: os.environ.get(k) for k in ("FABRIC_OTLP_ENDPOINT", "FABRIC_LINEAGE")}
    os.environ["FABRIC_OTLP_ENDPOINT"] = otlp[0]  # before Ray starts: its workers inherit it
    os.environ.pop("FABRIC_LINEAGE", None)
    os.chdir(REPO)
    client = fb.connect("local", num_cpus=2, home=str(fabric_home))
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
    token = mint_token(tokens, "research")
    others = {"trading": mint_token(tokens, "trading"), "admin": mint_token(tokens, "ops", admin=True)}
    url = start_gateway(tokens, free_port())
    remote = fb.connect(url, token=token)
    ok = remote.submit(REPO / "jobs/dags/quant_backtest.yaml", {"labels": {"suite": "ui"}})
    bad = remote.submit(FAILING, {"labels": {"suite": "ui"}})
    assert ok.wait(120).state == "SUCCEEDED" and bad.wait(60).state == "FAILED"
    try:
        yield {"client": client, "url": url, "token": token, "ok": ok.id, "bad": bad.id, "remote": remote,
               "home": fabric_home, **others}
    finally:
        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _auth(stack):
    return {"Authorization": f"Bearer {stack['token']}"}


def test_lineage_lists_every_node_with_inputs_outputs_and_hashes(stack):
    spec = yaml.safe_load((REPO / "jobs/dags/quant_backtest.yaml").read_text())
    spec_nodes = {n["id"]: n for n in spec["nodes"]}
    body = httpx.get(f"{stack['url']}/api/orch/lineage/{stack['ok']}", headers=_auth(stack), timeout=30).json()
    events = body["events"]
    assert [e["eventType"] for e in events if e["job"]["name"] == "quant_backtest_v1"] == ["START", "COMPLETE"]
    done = {e["job"]["name"].split(".", 1)[1]: e for e in events
            if e["eventType"] == "COMPLETE" and "." in e["job"]["name"]}
    assert set(done) == set(spec_nodes)
    for node_id, event in done.items():
        inputs = {d["facets"]["fabric_output"]["input"] for d in event["inputs"]}
        assert inputs == set(spec_nodes[node_id].get("ins", [])), node_id
        outs = [d for d in event["outputs"] if d["namespace"] == "fabric"]
        assert [d["facets"]["fabric_output"]["out"] for d in outs] == spec_nodes[node_id].get("outs", ["result"])
        for dataset in event["inputs"] + event["outputs"]:
            assert len(dataset["facets"]["datasetVersion"]["datasetVersion"]) >= 16, (node_id, dataset["name"])
    # A persisted out names its file in the artifact store, with the SHA-256 of its bytes.
    [prices] = [d for d in done["clean_prices"]["outputs"] if d["name"].endswith(".prices")]
    stored = prices["facets"]["fabric_output"]
    assert Path(stored["uri"].split("#")[0]).is_file() and len(stored["sha256"]) == 64
    # The same events went to the lineage file through openlineage-python (sent off the engine's thread).
    lineage_file = stack["home"] / "lineage" / "events.jsonl"
    deadline = time.monotonic() + 20
    wanted = {e["run"]["runId"] + e["eventType"] for e in events}
    while time.monotonic() < deadline:
        sent = [json.loads(line) for line in lineage_file.read_text().splitlines()] if lineage_file.exists() else []
        if wanted <= {e["run"]["runId"] + e["eventType"] for e in sent}:
            break
        time.sleep(0.5)
    assert wanted <= {e["run"]["runId"] + e["eventType"] for e in sent}


def test_a_failed_node_has_fail_events_per_attempt_and_the_submission_fails(stack):
    events = stack["remote"].get(stack["bad"]).lineage()
    broken = [e["eventType"] for e in events if e["job"]["name"] == "ui_failing.broken"]
    assert broken == ["START", "FAIL", "START", "FAIL"]
    fails = [e for e in events if e["job"]["name"] == "ui_failing.broken" and e["eventType"] == "FAIL"]
    assert all("the join lost every row" in e["run"]["facets"]["errorMessage"]["message"] for e in fails)
    assert len({e["run"]["runId"] for e in fails}) == 2  # one OpenLineage run per attempt
    assert [e["eventType"] for e in events if e["job"]["name"] == "ui_failing"] == ["START", "FAIL"]


def test_traces_arrive_over_otlp_with_the_submission_as_parent(stack, otlp):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = [s for body in list(otlp[1]) for r in ExportTraceServiceRequest.FromString(body).resource_spans
                 for ss in r.scope_spans for s in ss.spans]
        mine = [s for s in spans if any(a.key == "fabric.submission_id" and a.value.string_value == stack["ok"]
                                        for a in s.attributes)]
        if len(mine) >= 1 + 2 * 6:
            break
        time.sleep(0.5)
    roots = [s for s in mine if s.parent_span_id == b""]
    assert len(roots) == 1 and roots[0].name == "submission quant_backtest_v1"
    nodes = [s for s in mine if s.parent_span_id == roots[0].span_id]
    assert len(nodes) == 6
    attempts = [s for s in mine if s.parent_span_id in {n.span_id for n in nodes}]
    attrs = {a.key: a.value for a in attempts[0].attributes}
    assert len(attempts) == 6 and attrs["fabric.team"].string_value == "research"
    assert attrs["fabric.attempt"].int_value == 1 and attrs["fabric.pool"].string_value == "default"


def test_graph_route_has_the_shape_the_attempts_and_the_critical_path(stack):
    http = httpx.Client(base_url=stack["url"], timeout=30)
    assert http.get(f"/api/orch/graph/{stack['ok']}").status_code == 401
    graph = http.get(f"/api/orch/graph/{stack['ok']}", headers=_auth(stack)).json()
    assert [n["id"] for n in graph["nodes"]][0] == "make_data"
    assert graph["critical_path"][0] == "make_data" and graph["critical_path"][-1] == "report"
    assert all(len(graph["attempts"][n["id"]]) == 1 for n in graph["nodes"])
    bad = http.get(f"/api/orch/graph/{stack['bad']}", headers=_auth(stack)).json()
    assert [a["outcome"] for a in bad["attempts"]["broken"]] == ["RETRYING", "FAILED"]
    assert bad["attempts"]["after"] == []
    assert http.get("/api/orch/graph/nope", headers=_auth(stack)).status_code == 404


def test_another_team_sees_nothing_and_an_admin_sees_every_team(stack):
    """Work run without the gateway (`fabric run`, the SDK: no team) shows in /ui for an admin token."""
    untagged = stack["client"].submit(FAILING | {"pipeline_id": "ui_no_team"})
    untagged.wait(60)
    http = httpx.Client(base_url=stack["url"], timeout=30)
    trading = {"Authorization": f"Bearer {stack['trading']}"}
    admin = {"Authorization": f"Bearer {stack['admin']}"}
    for route in ("graph", "lineage", "status"):
        assert http.get(f"/api/orch/{route}/{stack['ok']}", headers=trading).status_code == 404
        assert http.get(f"/api/orch/{route}/{stack['ok']}", headers=admin).status_code == 200
        assert http.get(f"/api/orch/{route}/{untagged.id}", headers=admin).status_code == 200
        assert http.get(f"/api/orch/{route}/{untagged.id}", headers=_auth(stack)).status_code == 404
    listed = {i["submission_id"] for i in http.get("/api/orch/submissions", headers=admin).json()["items"]}
    assert {stack["ok"], stack["bad"], untagged.id} <= listed
    assert http.get("/api/orch/submissions", headers=trading).json()["items"] == []


def test_the_ui_is_static_and_its_data_needs_a_token(stack):
    http = httpx.Client(base_url=stack["url"], timeout=30)
    page = http.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "app.js" in page.text
    assert stack["token"] not in page.text and stack["ok"] not in page.text
    assert http.get("/ui/app.js").status_code == 200 and http.get("/ui/../gateway.py").status_code == 404
    assert http.get("/ui/nothing.js").status_code == 404
    assert http.get(f"/api/orch/lineage/{stack['ok']}").status_code == 401


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/test.sh installs "
                                                         "it where apt-get is available)")
def test_the_ui_in_headless_chromium(stack, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=args,
            viewport={"width": 1400, "height": 900})
        try:
            page = browser.new_page()
            page.goto(f"{stack['url']}/ui/")
            page.wait_for_selector("#login:not([hidden])")
            page.fill("#token", "not-a-token")
            page.click("#login-form button")
            page.wait_for_selector("#login-error:has-text('not accepted')")
            page.fill("#token", stack["token"])
            page.click("#login-form button")
            page.wait_for_selector(f"tr[data-submission='{stack['ok']}']")
            listed: list[str] = []
            page.on("request", lambda r: listed.append(r.url) if "/api/orch/submissions" in r.url else None)
            page.fill("#f-search", "ui_failing")  # searched on the server, not filtered in the page
            page.click("#filters button")
            page.wait_for_selector(f"tr[data-submission='{stack['ok']}']", state="detached")
            assert page.locator(f"tr[data-submission='{stack['bad']}']").count() == 1
            assert "search=ui_failing" in listed[-1] and "limit=50" in listed[-1], listed
            assert page.locator("#page-next").is_disabled() and page.locator("#page-prev").is_disabled()
            page.fill("#f-search", "")
            page.select_option("#f-state", "FAILED")
            page.click("#filters button")
            page.wait_for_selector(f"tr[data-submission='{stack['ok']}']", state="detached")
            page.click(f"tr[data-submission='{stack['bad']}']")
            # A failed node's log is one click away.
            page.wait_for_selector("g.node[data-node='broken'][data-state='FAILED']")
            page.click("g.node[data-node='broken']")
            page.wait_for_selector("#log:has-text('the join lost every row')")
            assert page.locator("#cancel").is_disabled()
            page.goto(f"{stack['url']}/ui/#/s/{stack['ok']}")
            page.wait_for_selector("g.node[data-node='report'][data-state='SUCCEEDED']")
            states = page.eval_on_selector_all("g.node", "els => els.map(e => e.dataset.state)")
            assert states == ["SUCCEEDED"] * 6
            assert page.locator("#gantt-svg rect.run").count() == 6
            assert page.locator("#gantt-svg text", has_text="★").count() >= 2
            page.click("g.node[data-node='make_data']")
            page.wait_for_selector("#log:has-text('attempt 1')")
            shot = tmp_path / "ui.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1_000_000) or []
    assert image.size[0] >= 1000 and len(colours) > 50  # not blank: many colours (text, green nodes, bars)
    green = sum(count for count, (r, g, b) in colours if g > 120 and r < 60 and b < 100)
    assert green > 2000  # the green of six SUCCEEDED nodes
    if os.environ.get("FABRIC_UI_SCREENSHOT"):  # regenerate docs/ui.png
        shutil.copy(shot, os.environ["FABRIC_UI_SCREENSHOT"])


CELLS = "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
XSS = '<img src=x onerror="window.__xss=1">'
TAGGED = {"version": 1, "pipeline_id": "ui_tagged", "params": {"note": {"type": "string", "default": "plain"}},
          "nodes": [{"id": "only", "kind": "python_task", "entrypoint": "tests.nodes:noop",
                     "params": {"note": "{{ params.note }}"}}]}


@pytest.fixture(scope="module")
def catalogued(stack):
    """The quant example registered and run once by name (10 assets), a schedule on it, a two-date backfill of
    it run to the end; and a pipeline whose run has markup in a param (tenant input the page must not run)."""
    remote = stack["remote"]
    remote.register(REPO / "jobs/dags/quant_backtest.yaml")
    run = remote.run_pipeline("quant_backtest_v1", {"n_assets": 10})
    remote.schedule("quant_backtest_v1", {"name": "nightly", "cron": "0 6 * * MON-FRI",
                                          "timezone": "America/New_York", "params": {"n_assets": 10}})
    fill = remote.backfill("quant_backtest_v1", "2021-11-10", "2021-11-11", step="1b", params={"n_assets": 10},
                           max_active=2)
    remote.register(TAGGED)
    tagged = remote.run_pipeline("ui_tagged", {"note": XSS})
    assert remote.get(run["submission_id"]).wait(120).state == "SUCCEEDED"
    assert remote.get(tagged["submission_id"]).wait(60).state == "SUCCEEDED"
    deadline = time.monotonic() + 120
    while remote.backfill_status(fill["backfill_id"])["state"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(1)
    assert remote.backfill_status(fill["backfill_id"])["counts"]["SUCCEEDED"] == 2
    return {"run": run["submission_id"], "tagged": tagged["submission_id"], "backfill": fill["backfill_id"]}


@pytest.mark.timeout(420)
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_ui_pipelines_page_and_a_runs_params_metrics_and_equity_curve(stack, catalogued, tmp_path):

    http = httpx.Client(base_url=stack["url"], headers=_auth(stack), timeout=30)
    run = catalogued["run"]
    report = http.get(f"/api/orch/artifacts/{run}/metrics.json").json()
    days = report["nodes"]["report"]["metrics"]["days"]
    chart = http.get(f"/api/orch/artifacts/{run}/backtest/equity.chart.json").json()
    assert len(chart["x"]) == days == len(chart["series"][0]["y"]) and days > 100
    with browser_page(viewport={"width": 1400, "height": 900}) as page:
        page.goto(f"{stack['url']}/ui/#token={stack['token']}")
        page.click("#nav-pipelines")
        card = "div.card[data-pipeline='quant_backtest_v1']"
        page.wait_for_selector(f"{card} .strip a[data-submission='{run}'][data-state='SUCCEEDED']")
        assert page.locator(f"{card} .versions span[data-version='1']").count() == 1
        # Its run by name and the backfill's two dates, each a coloured square.
        assert page.locator(f"{card} .strip a[data-state='SUCCEEDED']").count() == 3
        fires = page.locator(f"{card} tr[data-schedule='nightly'] td.next").inner_text()
        assert fires.count("·") == 2, fires  # the next three fire times
        backfill = page.locator(f"{card} div.backfill[data-backfill='{catalogued['backfill']}']")
        assert backfill.get_attribute("data-state") == "SUCCEEDED"
        assert "2 succeeded of 2" in backfill.locator(".counts").inner_text()
        assert backfill.locator(".progress span.seg-SUCCEEDED").get_attribute("style").startswith("width:100%")
        # The run page: its params, the report node's metrics, and the equity curve, one point a PnL day.
        page.click(f"{card} .strip a[data-submission='{run}']")
        page.wait_for_selector("#charts-pane:not([hidden]) polyline.series")
        params = dict(page.eval_on_selector_all("#d-params tr", CELLS))
        assert params == {"as_of": "2021-11-16", "n_assets": "10"}
        rows = page.eval_on_selector_all("#d-metrics tr", CELLS)
        metrics = {(node, key): value for node, key, value in rows}
        assert metrics[("report", "days")] == str(days) and ("report", "sharpe") in metrics
        assert ("report", "max_drawdown") in metrics
        lines = page.eval_on_selector_all(
            ".chart[data-node='backtest'] polyline.series",
            "ls => ls.map(l => [l.dataset.series, l.getAttribute('points').trim().split(' ').length])")
        assert lines == [["0", days], ["1", days]]
        page.screenshot(path=str(tmp_path / "ui-run.png"), full_page=True)
        # Tenant input is shown as text, never run: the param's markup is in the table, and no image exists.
        page.goto(f"{stack['url']}/ui/#/s/{catalogued['tagged']}")
        page.wait_for_selector("#d-params td:has-text('onerror')")
        assert page.locator("#d-params td").nth(1).text_content() == XSS
        page.goto(f"{stack['url']}/ui/#/p")
        page.wait_for_selector("div.card[data-pipeline='ui_tagged'] .strip a[data-state='SUCCEEDED']")
        assert page.locator("img").count() == 0 and page.evaluate("window.__xss") is None
        page.screenshot(path=str(tmp_path / "ui-pipelines.png"), full_page=True)
    if os.environ.get("FABRIC_UI_SCREENSHOT"):  # beside docs/ui.png: docs/ui-run.png, docs/ui-pipelines.png
        for name in ("ui-run.png", "ui-pipelines.png"):
            shutil.copy(tmp_path / name, Path(os.environ["FABRIC_UI_SCREENSHOT"]).with_name(name))


BUTTONS = {"version": 1, "pipeline_id": "ui_buttons",
           "params": {"as_of": {"type": "date", "default": "2024-01-02"}, "note": {"type": "string", "default": "x"}},
           "nodes": [{"id": "only", "kind": "python_task", "entrypoint": "tests.nodes:noop",
                      "params": {"note": "{{ params.note }}", "as_of": "{{ params.as_of }}"}}]}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_pipelines_page_buttons_run_pause_resume_and_backfill(stack, tmp_path):
    """The Pipelines page's buttons, with the page's token: a run with params, a schedule paused and resumed, a
    backfill started, and a bad backfill answered in the card with the field it names."""

    remote = stack["remote"]
    remote.register(BUTTONS)
    remote.schedule("ui_buttons", {"name": "hourly", "cron": "0 * * * *"})
    card = "div.card[data-pipeline='ui_buttons']"
    with browser_page(viewport={"width": 1400, "height": 900}) as page:
        page.goto(f"{stack['url']}/ui/#token={stack['token']}")
        page.click("#nav-pipelines")
        page.wait_for_selector(f"{card} tr[data-schedule='hourly'] button.pause")
        page.fill(f"{card} input[name='run-params']", "note=x as_of=2024-13-01")  # no 13th month
        page.click(f"{card} button.run")
        page.wait_for_selector(f"{card} p.said.error:has-text('as_of')")
        assert remote.pipeline_runs("ui_buttons") == []
        page.fill(f"{card} input[name='run-params']", json.dumps({"note": XSS, "as_of": "2024-02-29"}))
        page.click(f"{card} button.run")
        page.wait_for_selector(f"{card} p.said:has-text('started')")
        [run] = remote.pipeline_runs("ui_buttons")
        assert run["params"] == {"note": XSS, "as_of": "2024-02-29"}
        assert remote.get(run["submission_id"]).wait(60).state == "SUCCEEDED"
        page.wait_for_selector(f"{card} .strip a[data-submission='{run['submission_id']}'][data-state='SUCCEEDED']")
        page.click(f"{card} tr[data-schedule='hourly'] button.pause")
        page.wait_for_selector(f"{card} tr[data-schedule='hourly'] td.next:has-text('paused')")
        assert [s["paused"] for s in remote.schedules("ui_buttons")] == [True]
        page.click(f"{card} tr[data-schedule='hourly'] button.resume")
        page.wait_for_selector(f"{card} tr[data-schedule='hourly'] button.pause")
        assert [s["paused"] for s in remote.schedules("ui_buttons")] == [False]
        # A backfill whose end is before its start: the card names the field, nothing is made.
        page.fill(f"{card} input[name='bf-start']", "2024-01-03")
        page.fill(f"{card} input[name='bf-end']", "2024-01-01")
        page.click(f"{card} button.backfill")
        page.wait_for_selector(f"{card} p.said.error:has-text('end: end 2024-01-01 is before start')")
        assert [b for b in remote.backfills() if b["pipeline_id"] == "ui_buttons"] == []
        page.fill(f"{card} input[name='bf-end']", "2024-01-05")
        page.fill(f"{card} input[name='bf-max']", "2")
        page.click(f"{card} button.backfill")
        page.wait_for_selector(f"{card} p.said:has-text('3 dates')")
        [fill] = [b for b in remote.backfills() if b["pipeline_id"] == "ui_buttons"]
        assert fill["max_active"] == 2 and fill["total"] == 3
        page.wait_for_selector(f"{card} div.backfill[data-state='SUCCEEDED']", timeout=90_000)
        assert "3 succeeded of 3" in page.locator(f"{card} div.backfill .counts").inner_text()
        assert page.locator("img").count() == 0 and page.evaluate("window.__xss") is None


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_ui_cancel_button_leaves_no_poller_behind(stack, tmp_path):
    """Cancel a running submission from its page: the page polls until the run has ended, then stops;
    leaving the page stops it too. (The old page started a second poller on cancel and never stopped it.)"""

    slow = {"version": 1, "pipeline_id": "ui_slow",
            "nodes": [{"id": "wait", "kind": "python_task", "entrypoint": "tests.nodes:sleeper",
                       "params": {"seconds": 60}}]}
    running = stack["remote"].submit(slow)
    with browser_page() as page:
        polls: list[float] = []
        page.on("request", lambda r: polls.append(time.monotonic()) if "/api/orch/status/" in r.url else None)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{stack['url']}/ui/#token={stack['token']}")
        page.goto(f"{stack['url']}/ui/#/s/{running.id}")
        page.wait_for_selector("#d-state:has-text('RUNNING')")
        page.wait_for_timeout(1500)
        assert len(polls) >= 2  # it polls while the run runs
        page.click("#cancel")
        page.wait_for_selector("#d-state:has-text('CANCELLED')", timeout=30_000)
        ended = len(polls)
        page.wait_for_timeout(2500)
        assert len(polls) == ended and page.evaluate("view.timer") is None  # no poller after the end
        # Leaving a running submission's page stops its poller as well.
        again = stack["remote"].submit(slow)
        page.goto(f"{stack['url']}/ui/#/s/{again.id}")
        page.wait_for_selector("#d-state:has-text('RUNNING')")
        page.goto(f"{stack['url']}/ui/#/")
        page.wait_for_selector("#list:not([hidden])")
        left = len(polls)
        page.wait_for_timeout(2500)
        assert len(polls) == left and page.evaluate("view.timer") is None
        again.cancel()
    assert running.wait(30).state == "CANCELLED"


def map_of_six(marker_dir: str) -> dict:
    """A map over 6 items whose child m[2] fails once and is retried, and a reader of all six values."""
    return {"version": 1, "pipeline_id": "ui_map",
            "nodes": [{"id": "xs", "kind": "python_task", "entrypoint": "tests.nodes:int_list", "params": {"n": 6},
                       "outs": ["xs"]},
                      {"id": "m", "kind": "python_task", "entrypoint": "tests.nodes:item_said",
                       "params": {"marker_dir": marker_dir, "fail_once": 2}, "ins": ["item=xs"], "outs": ["ys"],
                       "map": {"over": "item"}, "slo": {"retry": {"max_attempts": 2, "backoff_sec": 0.2}}},
                      {"id": "total", "kind": "python_task", "entrypoint": "tests.nodes:echo", "ins": ["ys"]}],
            "edges": [{"from": "xs", "to": "m"}, {"from": "m", "to": "total"}]}


@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_ui_shows_a_map_as_one_node_and_each_child_with_its_attempts_and_log(stack, tmp_path):

    submission = stack["remote"].submit(map_of_six(str(tmp_path / "markers")))
    status = submission.wait(90)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    with browser_page(viewport={"width": 1400, "height": 900}) as page:
        page.goto(f"{stack['url']}/ui/#token={stack['token']}")
        page.goto(f"{stack['url']}/ui/#/s/{submission.id}")
        page.wait_for_selector("g.node[data-node='total'][data-state='SUCCEEDED']")
        # One node for the map (no child drawn in the graph), with its counts and a full progress bar.
        assert page.eval_on_selector_all("g.node", "els => els.map(e => e.dataset.node)") == ["xs", "m", "total"]
        node = page.locator("g.node[data-node='m']")
        assert node.get_attribute("data-state") == "SUCCEEDED"
        assert node.locator("text").nth(1).text_content() == "map · 6/6 ok"
        bar = node.locator("rect[data-map-progress]")
        assert bar.get_attribute("data-map-progress") == "6" and float(bar.get_attribute("width")) == 170.0
        assert page.locator("#children-pane").is_hidden()
        # Its children, node[i], from a click on the map: each one's state and attempts.
        page.click("g.node[data-node='m']")
        page.wait_for_selector("#children-pane:not([hidden]) #d-children tr[data-node='m[5]']")
        assert page.locator("#children-of").text_content() == "m"
        rows = page.eval_on_selector_all("#d-children tbody tr", CELLS)
        assert [row[:3] for row in rows] == [
            [f"m[{i}]", "SUCCEEDED", "2 (RETRYING → SUCCEEDED)" if i == 2 else "1 (SUCCEEDED)"] for i in range(6)]
        assert rows[2][3] == "ValueError: item 2 fails once" and [row[3] for row in rows[:2]] == ["", ""]
        # A child's log, every attempt of it and nothing of its siblings'.
        page.click("#d-children tr[data-node='m[2]']")
        page.wait_for_selector("#log:has-text('item 2 execution 2')")
        log = page.locator("#log").text_content()
        assert "item 2 execution 1" in log and "--- attempt 2" in log and "item 4" not in log, log
        assert page.locator("#log-node").text_content() == "· m[2]"
        assert page.locator("#d-children tr.here").get_attribute("data-node") == "m[2]"
        assert "selected" in (node.get_attribute("class") or "")  # the child's map stays marked in the graph
        page.click("#d-children tr[data-node='m[4]']")
        page.wait_for_selector("#log:has-text('item 4 execution 1')")
        assert "item 2" not in page.locator("#log").text_content()
        # Another node hides the children again.
        page.click("g.node[data-node='total']")
        page.wait_for_selector("#children-pane", state="hidden")
    assert stack["remote"].get(submission.id).logs("m[2]").count("--- attempt") == 2


def test_cli_graph_and_logs_follow(stack, tmp_path, capfd):
    from typer.testing import CliRunner

    from fabric.cli import app

    runner = CliRunner()
    svg = tmp_path / "dag.svg"
    result = runner.invoke(app, ["graph", stack["bad"], "--out", str(svg)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "broken" in result.output and "FAILED" in result.output and "← start" in result.output
    assert svg.read_text().startswith("<svg") and svg.read_text().count('data-node="') == 3
    result = runner.invoke(app, ["logs", stack["bad"], "--node", "broken", "--follow"])
    assert result.exit_code == 0, result.output
    assert result.output.count("--- attempt") == 2


def _execute(notebook: str, env: dict[str, str]) -> None:
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel is a child process: it inherits these
    try:
        NotebookClient(book, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_quickstart_notebook_runs_top_to_bottom(stack):
    import ray

    # A driver on the head finds the control key in the registry's FABRIC_HOME, as `fabric up`'s users do.
    _execute("quickstart.ipynb", {"FABRIC_ADDRESS": ray.get_runtime_context().gcs_address,
                                  "FABRIC_HOME": str(stack["home"])})


def test_gateway_notebook_runs_top_to_bottom(stack):
    _execute("gateway.ipynb", {"FABRIC_GATEWAY_URL": stack["url"], "FABRIC_TOKEN": stack["token"]})


def test_pipelines_notebook_runs_top_to_bottom(stack):
    _execute("pipelines.ipynb", {"FABRIC_GATEWAY_URL": stack["url"], "FABRIC_TOKEN": stack["token"]})
