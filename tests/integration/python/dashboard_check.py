#!/usr/bin/env python3
"""Drives tally's dashboard (/ui/) in headless Chromium over the DevTools
protocol (--remote-debugging-pipe: no websocket library needed) and checks
what it shows against the JSON API.

    dashboard_check.py BASE_URL API_KEY SUBJECT OUT_DIR [CHROMIUM]

Signs in (a wrong key first, which must be refused), opens the customer
view of SUBJECT and the admin view at a laptop (1366 px) and a phone
(390 px) width, saves a screenshot of each under OUT_DIR, and compares the
numbers on the page (each carries its raw value in data-v) with the API's
answers. Fails (exit 1, the reason on stderr) on any console error, any
uncaught exception, any Content-Security-Policy violation, an unexpected
failed request, a page wider than the window, or a number that differs.
With read state (GET /notifications) it also marks every notification
read from the page and checks the API agrees. Prints one JSON line of what
it checked.
"""
import base64
import calendar
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

BASE, KEY, SUBJECT, OUT = sys.argv[1:5]
CHROMIUM = sys.argv[5] if len(sys.argv) > 5 else (shutil.which("chromium") or "/usr/bin/chromium")
LAPTOP = (1366, 900)
PHONE = (390, 844)
checked = []


def fail(message):
    sys.stderr.write("dashboard_check: " + message + "\n")
    sys.exit(1)


def api(path, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method, headers={
        "Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, None


def route_missing(status, body):
    return status == 405 or (status == 404 and isinstance(body, dict) and
                             body.get("error", {}).get("message") == "no such route")


class Browser:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4
    (answers and events out), NUL-separated JSON."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="tally-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        def child_fds():
            # Through fds above 4 first: one of the pipe's ends may be 3 or 4.
            r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        args = [CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--metrics-recording-only",
                "--hide-scrollbars", "--mute-audio", "--user-data-dir=" + self.profile,
                "about:blank"]
        # dup2'd fds are inheritable; every other fd Python opened is not
        # (PEP 446), so nothing else leaks into the browser.
        self.proc = subprocess.Popen(args, close_fds=False, preexec_fn=child_fds,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.buf = b""
        self.next_id = 0
        self.events = []
        self.session = None
        # Fetch interception (fixture answers): path -> (status, JSON body);
        # the URLs answered so; fire-and-forget command ids.
        self.fixtures = {}
        self.fixture_hits = []
        self.aux_id = 1000000

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.from_child], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.from_child, 1 << 20)
            if not chunk:
                fail("chromium exited (is the Debian package chromium installed?)")
            self.buf += chunk
        message, self.buf = self.buf.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=True, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                fail("no answer to " + method + " within %d s" % timeout)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    fail(method + ": " + json.dumps(reply["error"]))
                return reply.get("result", {})
            if "method" in reply:
                self._event(reply)

    def _event(self, reply):
        """Keeps an event; answers a paused request (Fetch) at once,
        without waiting for the reply (it is one of the ignored ids)."""
        if reply["method"] != "Fetch.requestPaused":
            self.events.append(reply)
            return
        params = reply["params"]
        url = params["request"]["url"]
        fixture = self.fixtures.get(urllib.parse.urlsplit(url).path)
        self.aux_id += 1
        if fixture:
            self.fixture_hits.append(url)
            status, body = fixture
            msg = {"id": self.aux_id, "method": "Fetch.fulfillRequest", "params": {
                "requestId": params["requestId"], "responseCode": status,
                "responseHeaders": [{"name": "Content-Type", "value": "application/json"}],
                "body": base64.b64encode(json.dumps(body).encode()).decode()}}
        else:
            msg = {"id": self.aux_id, "method": "Fetch.continueRequest",
                   "params": {"requestId": params["requestId"]}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")

    def pump(self, seconds):
        deadline = time.time() + seconds
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                return
            if "method" in reply:
                self._event(reply)

    def eval(self, expression):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            fail("evaluating %s: %s" % (expression[:80], json.dumps(result["exceptionDetails"])[:400]))
        return result["result"].get("value")

    def wait_for(self, expression, what, timeout=20, detail=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.eval(expression):
                return
            self.pump(0.1)
        for e in self.events:
            if e["method"] in ("Runtime.exceptionThrown", "Log.entryAdded", "Runtime.consoleAPICalled"):
                sys.stderr.write(json.dumps(e.get("params"))[:800] + "\n")
        self.events_seen = len(self.events)
        self.screenshot("timeout")
        sys.stderr.write(str(self.eval("document.getElementById('view').outerHTML.slice(0, 1500)")) + "\n")
        fail("timed out waiting for %s%s (%s events)" % (
            what, ": " + json.dumps(self.eval(detail)) if detail else "", self.events_seen))

    def viewport(self, size):
        width, height = size
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        self.pump(0.3)

    def screenshot(self, name):
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path = os.path.join(OUT, name + ".png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))
        checked.append("screenshot " + name)


# The console may show failed requests only for routes this server does
# not have (the panels say "not available") and for the wrong key.
allowed_failures = set()


def check_events(browser, phase):
    for event in browser.events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            fail("%s: uncaught exception: %s" % (phase, json.dumps(params.get("exceptionDetails"))[:600]))
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            fail("%s: console.%s: %s" % (phase, params["type"], json.dumps(params.get("args"))[:600]))
        if method == "Log.entryAdded":
            entry = params["entry"]
            text = entry.get("text", "")
            if "Content Security Policy" in text or entry.get("source") == "security":
                fail("%s: CSP violation: %s" % (phase, text))
            if entry.get("level") == "error":
                url = entry.get("url", "")
                path = urllib.parse.urlsplit(url).path if url else ""
                if entry.get("source") == "network" and any(path.endswith(a) for a in allowed_failures):
                    continue
                fail("%s: console error (%s): %s %s" % (phase, entry.get("source"), text, url))
    browser.events.clear()
    violations = browser.eval("JSON.stringify(window.__csp || [])")
    if violations != "[]":
        fail("%s: CSP violations: %s" % (phase, violations))


def values(browser):
    """Every data-k on the page with its data-v, and its text."""
    return browser.eval("""(() => { const o = {}; document.querySelectorAll('[data-k]').forEach(e => {
        o[e.getAttribute('data-k')] = {v: e.getAttribute('data-v'), t: e.textContent}; }); return o; })()""")


def expect(vals, key, want, phase):
    got = vals.get(key)
    if got is None:
        fail("%s: %s not on the page" % (phase, key))
    if str(got["v"]) != str(want):
        fail("%s: %s shows %s, the API says %s" % (phase, key, got["v"], want))
    checked.append(key)


def no_overflow(browser, phase):
    wide = browser.eval("document.documentElement.scrollWidth - window.innerWidth")
    if wide > 0:
        fail("%s: the page is %d px wider than the window" % (phase, wide))


def panel_states(browser):
    return browser.eval("""(() => { const o = {}; document.querySelectorAll('section.card[id]').forEach(e => {
        o[e.id] = e.getAttribute('data-state'); }); return o; })()""")


def wait_panels(browser, what):
    browser.wait_for("[...document.querySelectorAll('section.card[id]')].length > 0 && "
                     "[...document.querySelectorAll('section.card[id]')].every(e => e.getAttribute('data-state') !== 'loading')",
                     what + " panels loaded", detail="""(() => { const o = {}; document.querySelectorAll('section.card[id]').forEach(e => {
        o[e.id] = e.getAttribute('data-state'); }); return o; })()""")


def tables_fit(browser, phase):
    """The analytics tables fit their cards (no scrolling sideways)."""
    wide = browser.eval("[...document.querySelectorAll('#top-table, #breakdown-table')]"
                        ".filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth + 1).map(t => t.id)")
    if wide:
        fail("%s: %s wider than its card" % (phase, wide))


def analytics_query():
    """The period the page asks for "this cycle" (ui/app.js analyticsPeriod):
    this UTC month so far, as days."""
    now = time.gmtime()
    return "&from=%04d-%02d-01&to=%04d-%02d-%02d" % (now.tm_year, now.tm_mon, now.tm_year,
                                                     now.tm_mon, now.tm_mday)


def check_analytics(browser, top, breakdown, phase):
    """The admin view's two analytics panels against the answers top and
    breakdown (the agreed shapes): every subject's cost, quantity and
    events, every model's cost and events, the total, the period, and the
    "Incomplete" mark iff "complete" is false."""
    vals = values(browser)
    states = panel_states(browser)
    for panel, answer, key in (("p-top", top, "top"), ("p-admin-models", breakdown, "breakdown")):
        rows = answer.get("subjects" if key == "top" else "groups") or []
        want = "ready" if rows else "empty"
        if states.get(panel) != want:
            fail("%s: %s is %s, want %s" % (phase, panel, states.get(panel), want))
        incomplete = vals.get(key + ".complete")
        if (answer.get("complete") is False) != (incomplete is not None and incomplete["v"] == "false"):
            fail("%s: %s: complete is %s but the page %s it incomplete" % (
                phase, panel, answer.get("complete"), "marks" if incomplete else "does not mark"))
        checked.append("%s complete=%s" % (key, answer.get("complete")))
        expect(vals, key + ".period", "%s-%s" % (answer["from_ms"], answer["to_ms"]), phase)
    shown = browser.eval("[...document.querySelectorAll('#top-table tbody tr')].map(r => r.dataset.subject)")
    if shown != [r["subject"] for r in top.get("subjects") or []]:
        fail("%s: top subjects shown %s, the answer has %s" % (phase, shown, [r["subject"] for r in top["subjects"]]))
    for r in top.get("subjects") or []:
        for field in ("cost_micros", "quantity", "events"):
            expect(vals, "top.%s.%s" % (r["subject"], field), r[field], phase)
    groups = breakdown.get("groups") or []
    shown = browser.eval("[...document.querySelectorAll('#breakdown-table tbody tr')].map(r => r.dataset.group)")
    if sorted(shown or []) != sorted(g["value"] for g in groups):
        fail("%s: models shown %s, the answer has %s" % (phase, shown, [g["value"] for g in groups]))
    for g in groups:
        for field in ("cost_micros", "events"):
            expect(vals, "breakdown.%s.%s" % (g["value"], field), g[field], phase)
    if groups:
        expect(vals, "breakdown.total.cost_micros", breakdown["total"]["cost_micros"], phase)
        expect(vals, "breakdown.total.events", breakdown["total"]["events"], phase)


# Fixture answers in the agreed shapes of GET /v1/analytics/top and
# /v1/analytics/breakdown (issue 17), served to the page by Chromium
# (Fetch interception) so the panels are checked before those routes exist.
def fixture_answers():
    now_ms = int(time.time() * 1000)
    start = time.gmtime()
    from_ms = calendar.timegm((start.tm_year, start.tm_mon, 1, 0, 0, 0)) * 1000
    top = {"feature": None, "by": "cost", "from_ms": from_ms, "to_ms": now_ms, "complete": True,
           "subjects": [{"subject": "user:acme-prod", "quantity": 182000, "cost_micros": 412345000, "events": 9120},
                        {"subject": "api_key:6b86b273ff34fce19d6b804eff5a3f57", "quantity": 91000,
                         "cost_micros": 128900000, "events": 4410},
                        {"subject": "user:globex", "quantity": 40210, "cost_micros": 63000500, "events": 2011},
                        {"subject": "user:initech", "quantity": 1200, "cost_micros": 2400000, "events": 60}]}
    breakdown = {"feature": None, "group_by": "model", "from_ms": from_ms, "to_ms": now_ms, "complete": False,
                 "total": {"quantity": 5400000, "cost_micros": 521100000, "events": 15601},
                 "groups": [{"value": "gpt-4o", "quantity": 3100000, "cost_micros": 388000000, "events": 9000},
                            {"value": "claude-3-5-sonnet", "quantity": 1500000, "cost_micros": 120100000,
                             "events": 5101},
                            {"value": "gpt-4o-mini", "quantity": 800000, "cost_micros": 13000000, "events": 1500}]}
    return top, breakdown


def main():
    os.makedirs(OUT, exist_ok=True)
    subject_path = "/v1/subjects/" + urllib.parse.quote(SUBJECT, safe="")
    for path in ("/v1/analytics/top", "/v1/analytics/breakdown", subject_path + "/invoices",
                 subject_path + "/notifications"):
        status, body = api(path)
        if route_missing(status, body):
            allowed_failures.add(path)
    allowed_failures.add("/v1/plans")  # the wrong key's 401, on purpose
    # Stripe's invoices answer 503 without Stripe and 404 for a subject
    # with no customer: the panel says so (checked below).
    status, body = api(subject_path + "/invoices")
    if status in (404, 503):
        allowed_failures.add(subject_path + "/invoices")

    browser = Browser()
    try:
        browser.send("Target.setDiscoverTargets", {"discover": False}, session=False)
        target = browser.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        browser.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                       session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(domain + ".enable")
        browser.send("Page.addScriptToEvaluateOnNewDocument", {"source":
            "window.__csp = []; document.addEventListener('securitypolicyviolation', "
            "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"})
        browser.viewport(LAPTOP)
        browser.send("Page.navigate", {"url": BASE + "/ui/"})
        browser.wait_for("document.readyState === 'complete' && !document.getElementById('signin').hidden",
                         "the sign-in form")
        browser.screenshot("signin-laptop")

        # A wrong key is refused and kept nowhere.
        browser.eval("document.getElementById('key').value = 'tly_wrong_key';"
                     "document.getElementById('signin-form').requestSubmit(); true")
        browser.wait_for("document.getElementById('signin-error').textContent.includes('not accepted')",
                         "the wrong key's refusal")
        checked.append("wrong key refused")

        # The right key: in memory only (the box is not ticked).
        browser.eval("document.getElementById('key').value = %s;"
                     "document.getElementById('signin-form').requestSubmit(); true" % json.dumps(KEY))
        browser.wait_for("!document.getElementById('nav').hidden", "signed in")
        if browser.eval("sessionStorage.getItem('tally.apiKey')") is not None:
            fail("the key went to sessionStorage without the box ticked")
        if browser.eval("document.cookie") != "":
            fail("the page set a cookie")
        checked.append("key in memory only")

        # ---- the customer view ----
        browser.eval("location.hash = '#/s/' + encodeURIComponent(%s); true" % json.dumps(SUBJECT))
        wait_panels(browser, "customer")
        if KEY in browser.eval("location.href"):
            fail("the key is in the URL")
        states = panel_states(browser)
        for panel in ("p-summary", "p-credits", "p-features", "p-daily", "p-notes", "p-invoices"):
            if states.get(panel) != "ready":
                fail("customer view: panel %s is %s, not ready" % (panel, states.get(panel)))
        phase = "customer view"
        vals = values(browser)
        status, usage = api(subject_path + "/usage")
        if status != 200:
            fail("GET usage: %d" % status)
        expect(vals, "plan", usage["plan"], phase)
        expect(vals, "cost_micros", usage["cost_micros"], phase)
        expect(vals, "credits.used", usage["credits"]["used"], phase)
        if usage["credits"]["limit"] is not None:
            expect(vals, "credits.limit", usage["credits"]["limit"], phase)
            expect(vals, "credits.remaining", usage["credits"]["remaining"], phase)
            expect(vals, "credits.percent", usage["credits"]["percent"], phase)
        for feature, entry in usage["features"].items():
            key = "feature." + feature
            expect(vals, key + ".used", entry["quantity"], phase)
            expect(vals, key + ".cost_micros", entry["cost_micros"], phase)
            if entry["limit"] is not None:
                expect(vals, key + ".limit", entry["limit"], phase)
                expect(vals, key + ".remaining", entry["remaining"], phase)
                expect(vals, key + ".percent", entry["percent"], phase)
        marks = browser.eval("[...document.querySelectorAll('#p-credits .mark')].map(m => +m.dataset.mark)")
        if usage["credits"]["limit"] is not None and marks != [25, 50, 75, 90, 100]:
            fail("credits bar marks %s, not 25/50/75/90/100" % marks)
        checked.append("threshold marks")
        # The 30-day chart: the page's own range, summed by the API.
        rng = browser.eval("""(() => { const r = [...document.querySelectorAll('#p-daily rect[data-date]')];
            return [r.length, r[0].dataset.date, r[r.length - 1].dataset.date]; })()""")
        if rng[0] != 30:
            fail("the daily chart has %d days, not 30" % rng[0])
        status, daily = api(subject_path + "/usage/daily?from=%s&to=%s" % (rng[1], rng[2]))
        expect(vals, "daily.total", sum(d.get("cost_micros", 0) for d in daily["days"]), phase)
        per_day = browser.eval("Object.fromEntries([...document.querySelectorAll('#p-daily rect[data-date]')].map(r => [r.dataset.date, +r.dataset.v]))")
        for d in daily["days"]:
            if per_day.get(d["date"]) != d["cost_micros"]:
                fail("daily chart %s shows %s, the API says %s" % (d["date"], per_day.get(d["date"]), d["cost_micros"]))
        checked.append("daily chart per day")
        # Closed cycles: the invoice history.
        status, cycles = api(subject_path + "/cycles")
        for c in cycles["cycles"]:
            expect(vals, "cycle.%d.cost_micros" % c["start_ms"], c["cost_micros"], phase)
        rows = browser.eval("document.querySelectorAll('#cycles-table tbody tr').length") or 0
        if rows != len(cycles["cycles"]):
            fail("invoice history shows %d cycles, the API %d" % (rows, len(cycles["cycles"])))
        checked.append("closed cycles %d" % rows)
        inv_state = browser.eval("(document.querySelector('[data-panel=stripe-invoices]') || {}).dataset.state")
        inv_status, inv = api(subject_path + "/invoices")
        if route_missing(inv_status, inv) and inv_state != "unavailable":
            fail("Stripe invoices: the route is missing but the panel is %s" % inv_state)
        if not route_missing(inv_status, inv) and inv_status in (404, 503) and inv_state != "empty":
            fail("Stripe invoices: the route answers %d but the panel is %s" % (inv_status, inv_state))
        if inv_status == 200 and inv_state not in ("ready", "empty"):
            fail("Stripe invoices: the route answers 200 but the panel is %s" % inv_state)
        checked.append("stripe invoices panel " + str(inv_state))
        # Cost by model: a breakdown when the server has one, else "not available".
        if states.get("p-models") not in ("ready", "unavailable", "empty"):
            fail("cost by model panel is %s" % states.get("p-models"))
        checked.append("cost by model " + states.get("p-models"))
        # Notifications: every alert is listed.
        n_status, notes = api(subject_path + "/notifications?limit=50")
        read_state = not route_missing(n_status, notes)
        if not read_state:
            n_status, notes = api(subject_path + "/alerts?limit=50")
        listed = browser.eval("[...document.querySelectorAll('#p-notes [data-alert-id]')].map(e => e.dataset.alertId)")
        want = [a["alert_id"] for a in (notes.get("notifications") or notes.get("alerts") or [])]
        if listed != want:
            fail("notifications listed %s, the API %s" % (listed, want))
        checked.append("notifications %d" % len(listed))
        portal = browser.eval("!!document.getElementById('billing-portal')")
        if portal != bool(usage.get("billing_linked")):
            fail("billing-portal button %s but billing_linked %s" % (portal, usage.get("billing_linked")))
        checked.append("billing portal button " + str(portal))
        check_events(browser, phase)
        no_overflow(browser, phase)
        browser.screenshot("customer-laptop")
        browser.viewport(PHONE)
        no_overflow(browser, "customer view (phone)")
        browser.screenshot("customer-phone")
        browser.viewport(LAPTOP)

        # Live usage: with the stream route the page says so, and an event
        # acknowledged by Kafka shows without a reload.
        if states.get("p-summary") == "ready":
            browser.wait_for("document.getElementById('live').dataset.live === 'true'",
                             "the live stream to connect")
            before = int(values(browser)["feature.api_calls.used"]["v"])
            status, body = api("/v1/events", "POST", {"event_id": "dashboard-live-1", "subject": SUBJECT,
                                                      "feature": "api_calls", "quantity": 7})
            if status != 202:
                fail("POST /v1/events: %d %s" % (status, body))
            browser.wait_for("document.querySelector('[data-k=\"feature.api_calls.used\"]').dataset.v === '%d'"
                             % (before + 7), "the live update of api_calls")
            status, usage = api(subject_path + "/usage")
            browser.wait_for("document.querySelector('[data-k=\"cost_micros\"]').dataset.v === '%d'"
                             % usage["cost_micros"], "the live update of the cost")
            checked.append("live update from the stream")
            check_events(browser, "live update")

        if read_state and notes.get("unread", 0) > 0:
            browser.eval("document.getElementById('mark-all-read').click(); true")
            deadline = time.time() + 20
            while time.time() < deadline:
                status, after = api(subject_path + "/notifications?unread=1")
                if status == 200 and after["unread"] == 0 and not after["notifications"]:
                    break
                browser.pump(0.2)
            else:
                fail("mark all read: the API still has unread notifications")
            browser.wait_for("(document.querySelector('[data-k=\"notifications.unread\"]') || {}).dataset?.v === '0'",
                             "the page to show 0 unread")
            checked.append("mark all read from the page")
            check_events(browser, "mark read")

        # ---- the admin view ----
        browser.eval("location.hash = '#/admin'; true")
        wait_panels(browser, "admin")
        phase = "admin view"
        states = panel_states(browser)
        if states.get("p-health") != "ready":
            fail("admin view: health is %s" % states.get("p-health"))
        vals = values(browser)
        with urllib.request.urlopen(urllib.request.Request(BASE + "/metrics", headers={"Authorization": "Bearer " + KEY}), timeout=10) as res:
            metrics = res.read().decode()
        lag = {}
        dead = None
        for line in metrics.splitlines():
            if line.startswith("tally_consumer_lag{"):
                part = line.split('partition="')[1].split('"')[0]
                lag[part] = int(float(line.split()[-1]))
            if line.startswith("tally_dead_letters_total "):
                dead = int(float(line.split()[-1]))
        for part, value in lag.items():
            expect(vals, "lag." + part, value, phase)
        expect(vals, "dead_letters", dead, phase)
        ready_status, _ = api("/readyz")
        expect(vals, "ready", 1 if ready_status == 200 else 0, phase)
        for panel, path in (("p-top", "/v1/analytics/top"), ("p-admin-models", "/v1/analytics/breakdown")):
            missing = path in allowed_failures
            if missing and states.get(panel) != "unavailable":
                fail("%s: route missing but the panel is %s" % (panel, states.get(panel)))
            if not missing and states.get(panel) not in ("ready", "empty"):
                fail("%s: route present but the panel is %s" % (panel, states.get(panel)))
            checked.append(panel + " " + states.get(panel))
        # ---- LEAD: the analytics panels against the real routes ----------
        # Runs once GET /v1/analytics/top and /v1/analytics/breakdown are
        # in this build (issue 17): the page's numbers against the API's
        # answer to the same query. Extend here (e.g. a feature filter, or
        # by=quantity) when the routes are merged.
        if "/v1/analytics/top" not in allowed_failures and "/v1/analytics/breakdown" not in allowed_failures:
            status_top, top = api("/v1/analytics/top?by=cost&limit=10" + analytics_query())
            status_models, models = api("/v1/analytics/breakdown?group_by=model" + analytics_query())
            if status_top != 200 or status_models != 200:
                fail("analytics: the API answered %s / %s" % (status_top, status_models))
            check_analytics(browser, top, models, "admin analytics (API)")
        # ------------------------------------------------------------------
        check_events(browser, phase)
        no_overflow(browser, phase)
        browser.screenshot("admin-laptop")
        browser.viewport(PHONE)
        no_overflow(browser, "admin view (phone)")
        browser.screenshot("admin-phone")
        browser.viewport(LAPTOP)

        # ---- the analytics panels against fixture answers -----------------
        # The agreed shapes, served by Chromium in place of the routes: the
        # table with bars, every number, the period and the "Incomplete"
        # mark (the breakdown's complete is false, the top's true).
        top, models = fixture_answers()
        browser.fixtures = {"/v1/analytics/top": (200, top), "/v1/analytics/breakdown": (200, models)}
        browser.send("Fetch.enable", {"patterns": [{"urlPattern": "*/v1/analytics/*"}]})
        browser.eval("location.hash = '#/'; true")
        browser.pump(0.2)
        browser.eval("location.hash = '#/admin'; true")
        wait_panels(browser, "admin (fixture analytics)")
        browser.wait_for("document.querySelectorAll('#top-table tbody tr').length > 0 && "
                         "document.querySelectorAll('#breakdown-table tbody tr').length > 0",
                         "the fixture analytics shown")
        if not any("by=cost" in u and "limit=10" in u for u in browser.fixture_hits) or \
                not any("group_by=model" in u for u in browser.fixture_hits):
            fail("analytics: the page asked %s" % browser.fixture_hits)
        check_analytics(browser, top, models, "admin analytics (fixture)")
        check_events(browser, "admin analytics (fixture)")
        no_overflow(browser, "admin analytics (fixture)")
        tables_fit(browser, "admin analytics (fixture)")
        browser.screenshot("admin-analytics-laptop")
        browser.viewport(PHONE)
        no_overflow(browser, "admin analytics (fixture, phone)")
        tables_fit(browser, "admin analytics (fixture, phone)")
        browser.screenshot("admin-analytics-phone")
        browser.viewport(LAPTOP)
        browser.send("Fetch.disable")
        browser.fixtures = {}

        # Sign out forgets the key.
        browser.eval("document.getElementById('signout').click(); true")
        browser.wait_for("!document.getElementById('signin').hidden", "signed out")
        check_events(browser, "sign out")
    finally:
        browser.close()
    print(json.dumps({"ok": True, "checked": checked}))


main()
