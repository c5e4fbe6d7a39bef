/*
 * tally dashboard. Served from the binary at /ui/ under a strict
 * Content-Security-Policy: this file is the only script, nothing inline,
 * every element built with the DOM (text through textContent only).
 *
 * The API key lives in memory (and in sessionStorage only when the user
 * ticks "keep it for this tab"); it is sent as a bearer token to this
 * origin's JSON API and never put in a URL or a cookie.
 *
 * Panels whose route is not in this build (the server answers 404 "no such
 * route") show a "not available" state and light up once the route exists.
 */
'use strict';
(function () {
  var KEY_STORE = 'tally.apiKey';
  var SUBJECT_STORE = 'tally.lastSubject';
  var DEFAULT_MARKS = [25, 50, 75, 90, 100];
  var REFRESH_MS = 15000;

  var apiKey = null;
  var plansCache = null;
  var refreshTimer = null;
  var liveStream = null;
  /* Alert ids marked read here whose marks the server may not have folded
   * yet (a mark is an event: read back after the next commit). */
  var markedHere = {};
  var renderSeq = 0;

  /* ---- DOM helpers --------------------------------------------------- */

  function h(tag, attrs) {
    var el = document.createElement(tag);
    setAttrs(el, attrs);
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  var SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs) {
    var el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function setAttrs(el, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === 'text') el.textContent = String(v);
      else if (k === 'on') Object.keys(v).forEach(function (ev) { el.addEventListener(ev, v[ev]); });
      else if (k === 'style') Object.keys(v).forEach(function (p) { el.style[p] = v[p]; });
      else el.setAttribute(k, v === true ? '' : String(v));
    });
  }
  function append(el) {
    for (var i = 1; i < arguments.length; i++) add(el, arguments[i]);
  }
  function add(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(el, c); }); return; }
    el.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function $(id) { return document.getElementById(id); }

  /* ---- formatting ---------------------------------------------------- */

  function num(n) { return (n === null || n === undefined) ? '–' : Number(n).toLocaleString('en-US'); }
  function money(micros) {
    if (micros === null || micros === undefined) return '–';
    var v = Number(micros) / 1e6;
    var digits = Math.abs(v) > 0 && Math.abs(v) < 1 ? 4 : 2;
    return '$' + v.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: digits });
  }
  var MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  function day(ms) { var d = new Date(ms); return d.getUTCDate() + ' ' + MONTHS[d.getUTCMonth()] + ' ' + d.getUTCFullYear(); }
  function shortDay(ms) { var d = new Date(ms); return MONTHS[d.getUTCMonth()] + ' ' + d.getUTCDate(); }
  function isoDay(ms) { return new Date(ms).toISOString().slice(0, 10); }
  function ago(ms) {
    var s = Math.round((Date.now() - ms) / 1000);
    if (s < 0) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function title(feature) {
    return String(feature).replace(/_/g, ' ').replace(/\b(ai|api|llm)\b/gi, function (w) { return w.toUpperCase(); })
      .replace(/^./, function (c) { return c.toUpperCase(); });
  }
  /* A cycle's end is exclusive: its last day is the day before. */
  function period(startMs, endMs) { return day(startMs) + ' – ' + day(endMs - 1); }
  function band(percent) { return percent === null || percent === undefined ? '' : percent >= 90 ? 'bad' : percent >= 75 ? 'warn' : ''; }

  /* ---- the API ------------------------------------------------------- */

  function api(method, path, body) {
    var headers = { 'Accept': 'application/json', 'Authorization': 'Bearer ' + apiKey };
    var init = { method: method, headers: headers, credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' };
    if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
    return fetch(path, init).then(function (res) {
      var type = res.headers.get('Content-Type') || '';
      var read = type.indexOf('json') >= 0 ? res.json().catch(function () { return null; }) : res.text();
      return read.then(function (data) {
        var r = { status: res.status, ok: res.ok, json: typeof data === 'object' ? data : null, text: typeof data === 'string' ? data : null };
        if (res.status === 401 && path.indexOf('/v1/') === 0) { signOut('That API key was refused (401). Sign in again.'); }
        return r;
      });
    }, function (err) {
      return { status: 0, ok: false, json: null, text: null, error: String(err) };
    });
  }
  /* The route is not in this build: 404 "no such route" (405: the path
   * exists for another method only). */
  function routeMissing(r) {
    var e = r.json && r.json.error;
    return (r.status === 404 && e && e.message === 'no such route') || r.status === 405;
  }
  function errorText(r) {
    if (r.status === 0) return 'The server did not answer (' + (r.error || 'network error') + ').';
    var e = r.json && r.json.error;
    return 'HTTP ' + r.status + (e ? ': ' + e.message : '');
  }
  function subjectPath(subject) { return '/v1/subjects/' + encodeURIComponent(subject); }
  function plans() {
    if (plansCache) return Promise.resolve(plansCache);
    return api('GET', '/v1/plans').then(function (r) { if (r.ok) plansCache = r.json; return r.ok ? r.json : null; });
  }

  /* ---- panels and states --------------------------------------------- */

  function panel(id, heading, sub, span) {
    var body = h('div', { class: 'panel-body' }, h('div', { class: 'skeleton' }));
    var actions = h('div', { class: 'actions' });
    var el = h('section', { class: 'card ' + (span || 'span-12'), id: id, 'data-state': 'loading' },
      h('div', { class: 'card-head' }, h('div', null, h('h3', { text: heading }), sub ? h('div', { class: 'muted small', text: sub }) : null), actions),
      body);
    return { el: el, body: body, actions: actions };
  }
  function fill(p, state, content) {
    p.el.setAttribute('data-state', state);
    clear(p.body);
    append(p.body, content);
  }
  function unavailable(p, what, needs) {
    fill(p, 'unavailable', h('div', { class: 'state unavailable' },
      h('strong', { text: 'Not available on this server' }),
      h('span', { text: what + ' ' + needs })));
  }
  function failed(p, r) { fill(p, 'error', h('div', { class: 'state error', role: 'alert', text: errorText(r) })); }
  function empty(p, text) { fill(p, 'empty', h('div', { class: 'state', text: text })); }

  /* A bar with its threshold marks: fill = min(percent, 100) %. */
  function meterBar(percent, marks, key) {
    var p = percent === null || percent === undefined ? 0 : Math.max(0, percent);
    var bar = h('div', { class: 'bar ' + band(percent), role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.min(p, 100), 'data-k': key ? key + '.percent' : null, 'data-v': percent });
    bar.appendChild(h('div', { class: 'fill', style: { width: Math.min(p, 100) + '%' } }));
    var labels = h('div', { class: 'marks', 'aria-hidden': 'true' });
    marks.forEach(function (m) {
      if (m <= 0 || m > 100) return;
      bar.appendChild(h('div', { class: 'mark' + (p >= m ? ' passed' : ''), title: m + ' %', 'data-mark': m, style: { left: m + '%' } }));
      labels.appendChild(h('span', { text: m + '%', style: { left: m + '%' } }));
    });
    return [bar, labels];
  }

  /* ---- sign-in ------------------------------------------------------- */

  function showSignin(message) {
    $('nav').hidden = true;
    $('view').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    $('key').value = '';
    $('key').focus();
  }
  function signOut(message) {
    apiKey = null;
    plansCache = null;
    try { sessionStorage.removeItem(KEY_STORE); } catch (e) { /* storage off */ }
    stopRefresh();
    showSignin(message);
  }
  function onSignin(ev) {
    ev.preventDefault();
    var key = $('key').value.trim();
    if (!key) return;
    var button = $('signin-button');
    button.disabled = true;
    $('signin-error').textContent = '';
    apiKey = key;
    api('GET', '/v1/plans').then(function (r) {
      button.disabled = false;
      if (r.status === 401) { apiKey = null; $('signin-error').textContent = 'That API key was not accepted.'; return; }
      if (!r.ok) { apiKey = null; $('signin-error').textContent = errorText(r); return; }
      plansCache = r.json;
      if ($('remember').checked) { try { sessionStorage.setItem(KEY_STORE, key); } catch (e) { /* storage off */ } }
      $('key').value = '';
      render();
    });
  }

  /* ---- routing ------------------------------------------------------- */

  function stopRefresh() {
    if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
    if (liveStream) { liveStream.stop(); liveStream = null; }
  }

  /* Live usage: GET .../stream (Server-Sent Events) read with fetch, since
   * EventSource cannot send the bearer token. Reconnects with
   * Last-Event-ID; a server without the route keeps the polling. */
  function openStream(base, seq, handlers) {
    if (!window.AbortController || !window.TextDecoder || !window.ReadableStream) return null;
    var ctrl = new AbortController();
    var lastId = null, stopped = false, timer = null;
    function parse(block) {
      var type = 'message', data = '';
      block.split('\n').forEach(function (line) {
        if (line.indexOf('event: ') === 0) type = line.slice(7);
        else if (line.indexOf('data: ') === 0) data += line.slice(6);
        else if (line.indexOf('id: ') === 0) lastId = line.slice(4);
      });
      if (!data) return;
      var json = null;
      try { json = JSON.parse(data); } catch (e) { return; }
      handlers.event(type, json);
    }
    function retry() {
      handlers.live(false);
      if (!stopped && seq === renderSeq) timer = setTimeout(connect, 2000);
    }
    function connect() {
      if (stopped || seq !== renderSeq) return;
      var headers = { 'Authorization': 'Bearer ' + apiKey, 'Accept': 'text/event-stream' };
      if (lastId) headers['Last-Event-ID'] = lastId;
      fetch(base + '/stream', { headers: headers, credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer', signal: ctrl.signal }).then(function (res) {
        if (res.status === 401) { signOut('That API key was refused (401). Sign in again.'); return; }
        if (res.status === 404 || res.status === 405) { stopped = true; handlers.live(false); return; }
        if (!res.ok || !res.body) { retry(); return; }
        handlers.live(true);
        var reader = res.body.getReader();
        var decoder = new TextDecoder();
        var buf = '';
        var pump = function () {
          return reader.read().then(function (chunk) {
            if (chunk.done) { retry(); return; }
            buf += decoder.decode(chunk.value, { stream: true });
            var at;
            while ((at = buf.indexOf('\n\n')) >= 0) { parse(buf.slice(0, at)); buf = buf.slice(at + 2); }
            return pump();
          });
        };
        return pump();
      }).catch(function () { if (!stopped) retry(); });
    }
    connect();
    return { stop: function () { stopped = true; clearTimeout(timer); ctrl.abort(); } };
  }
  function route() {
    var hash = location.hash || '#/';
    if (hash === '#/admin') return { view: 'admin' };
    var m = /^#\/s\/(.+)$/.exec(hash);
    if (m) { try { return { view: 'customer', subject: decodeURIComponent(m[1]) }; } catch (e) { /* bad escape */ } }
    return { view: 'home' };
  }
  function render() {
    if (!apiKey) { showSignin(); return; }
    stopRefresh();
    $('signin').hidden = true;
    $('nav').hidden = false;
    var view = clear($('view'));
    view.hidden = false;
    var r = route();
    $('nav-customer').className = r.view !== 'admin' ? 'active' : '';
    $('nav-admin').className = r.view === 'admin' ? 'active' : '';
    var seq = ++renderSeq;
    if (r.view === 'admin') renderAdmin(view, seq);
    else if (r.view === 'customer') renderCustomer(view, r.subject, seq);
    else renderHome(view);
  }
  function lookupForm(placeholder, initial) {
    var input = h('input', { type: 'search', placeholder: placeholder, 'aria-label': 'Subject', value: initial || '', spellcheck: 'false', id: 'subject-input' });
    return h('form', { class: 'lookup', on: { submit: function (ev) {
      ev.preventDefault();
      var v = input.value.trim();
      if (v) location.hash = '#/s/' + encodeURIComponent(v);
    } } }, input, h('button', { type: 'submit', class: 'secondary', text: 'Open' }));
  }
  function renderHome(view) {
    var last = null;
    try { last = sessionStorage.getItem(SUBJECT_STORE); } catch (e) { /* storage off */ }
    append(view, h('div', { class: 'home' },
      h('div', { class: 'card' },
        h('h2', { text: 'Open a customer' }),
        h('p', { class: 'muted', text: 'A subject as events carry it: user:alice, api_key:<sha256>, anonymous:<fingerprint> (a bare id means user:id).' }),
        lookupForm('user:alice', last)),
      h('div', { class: 'card' },
        h('h2', { text: 'Operate' }),
        h('p', { class: 'muted', text: 'Top subjects, cost per model and the processor\'s health.' }),
        h('a', { href: '#/admin', class: 'secondary', text: 'Open the admin view' }))));
  }

  /* ---- customer view -------------------------------------------------- */

  function renderCustomer(view, subject, seq) {
    try { sessionStorage.setItem(SUBJECT_STORE, subject); } catch (e) { /* storage off */ }
    var head = h('div', { class: 'page-head' },
      h('div', { class: 'title' }, h('span', { class: 'muted small', text: 'Customer' }), h('h1', { id: 'subject-title', text: subject }),
        h('div', { class: 'badges' }, h('span', { class: 'badges', id: 'badges' }), h('span', { class: 'pill grey', id: 'live', 'data-live': 'false', text: 'Refreshing every 15 s' }))),
      h('div', { class: 'lookup-wrap' }, lookupForm('Another subject', '')));
    var summary = panel('p-summary', 'Current cycle', null, 'span-12');
    var credits = panel('p-credits', 'Credits', 'Used this cycle against the plan\'s quota', 'span-5');
    var features = panel('p-features', 'Usage by feature', 'Used, limit and remaining, with the alert thresholds', 'span-7');
    var daily = panel('p-daily', 'Last 30 days', 'Daily totals (UTC days)', 'span-12');
    var models = panel('p-models', 'Cost by model', 'This cycle', 'span-5');
    var notes = panel('p-notes', 'Notifications', 'Alerts sent for this customer', 'span-7');
    var invoices = panel('p-invoices', 'Invoice history', 'Closed cycles as folded by tally, and Stripe\'s invoices', 'span-12');
    append(view, head, h('div', { class: 'grid' }, summary.el, credits.el, features.el, daily.el, models.el, notes.el, invoices.el));

    var base = subjectPath(subject);
    var shown = null; /* the plan and marks of the last usage shown */
    var showUsage = function (u) {
      showSummary(summary, u, shown.plan, base);
      showCredits(credits, u, shown.marks);
      showFeatures(features, u, shown.plan, shown.marks);
    };
    var load = function () {
      if (seq !== renderSeq) return;
      Promise.all([api('GET', base + '/usage'), plans()]).then(function (res) {
        if (seq !== renderSeq) return;
        var usage = res[0], cfg = res[1];
        if (!usage.ok) {
          var msg = usage.status === 404 ? 'No usage recorded for ' + subject + ' yet.' : null;
          [summary, credits, features].forEach(function (p) { msg ? empty(p, msg) : failed(p, usage); });
          return;
        }
        var plan = cfg && (cfg.plans || []).filter(function (p) { return p.name === usage.json.plan; })[0];
        var marks = plan && plan.thresholds && plan.thresholds.length ? plan.thresholds : DEFAULT_MARKS;
        shown = { plan: plan, marks: marks, planName: usage.json.plan };
        showUsage(usage.json);
        if (!liveStream) {
          liveStream = openStream(base, seq, {
            live: function (on) {
              var pill = $('live');
              if (!pill) return;
              pill.setAttribute('data-live', on ? 'true' : 'false');
              pill.className = 'pill ' + (on ? 'ok' : 'grey');
              pill.textContent = on ? '● Live' : 'Refreshing every 15 s';
            },
            event: function (type, json) {
              if (seq !== renderSeq) return;
              if (type === 'usage' && shown && json.plan === shown.planName) showUsage(json);
              else if (type === 'usage') load();
              else if (type === 'alert') { loadNotes(notes, base, seq); loadDaily(daily, base, seq); }
            }
          });
        }
      });
      loadDaily(daily, base, seq);
      loadModels(models, base, seq);
      loadNotes(notes, base, seq);
      loadInvoices(invoices, base, seq);
    };
    load();
    refreshTimer = setInterval(load, REFRESH_MS);
  }

  function showSummary(p, u, plan, base) {
    var badges = clear($('badges'));
    append(badges, h('span', { class: 'pill', 'data-k': 'plan', 'data-v': u.plan, text: 'Plan: ' + u.plan }));
    if (u.payment_failed) append(badges, h('span', { class: 'pill bad', text: 'Payment failed' }));
    if (u.canceled) append(badges, h('span', { class: 'pill grey', text: 'Subscription canceled' }));
    if (u.cycle_ended) append(badges, h('span', { class: 'pill warn', text: 'Cycle ended: closing' }));
    clear(p.actions);
    if (u.billing_linked) {
      var status = h('span', { class: 'muted small', role: 'status' });
      var button = h('button', { type: 'button', class: 'primary', id: 'billing-portal', text: 'Manage billing' });
      button.addEventListener('click', function () {
        button.disabled = true;
        status.textContent = 'Opening the billing portal…';
        api('POST', base + '/billing-portal', {}).then(function (r) {
          button.disabled = false;
          if (r.ok && r.json && /^https:\/\//.test(r.json.url)) { status.textContent = ''; location.assign(r.json.url); }
          else status.textContent = errorText(r);
        });
      });
      append(p.actions, [status, button]);
    }
    var left = Math.max(0, Math.ceil((u.cycle.end_ms - Date.now()) / 86400000));
    fill(p, 'ready', h('div', { class: 'stats' },
      stat('Cost this cycle', money(u.cost_micros), 'cost_micros', u.cost_micros, 'usage and AI tokens, before tax'),
      stat('Base price', money(u.base_price_micros), 'base_price_micros', u.base_price_micros, 'per cycle on ' + u.plan),
      stat('Cycle', period(u.cycle.start_ms, u.cycle.end_ms), 'cycle.start_ms', u.cycle.start_ms, u.cycle_ended ? 'ended' : left + ' day' + (left === 1 ? '' : 's') + ' left'),
      stat('Credits used', num(u.credits.used), 'credits.used', u.credits.used, u.credits.limit === null ? 'no credit quota' : 'of ' + num(u.credits.limit))));
  }
  function stat(label, value, key, raw, sub) {
    return h('div', { class: 'stat' }, h('span', { class: 'label', text: label }),
      h('span', { class: 'value', 'data-k': key, 'data-v': raw, text: value }),
      sub ? h('span', { class: 'sub', text: sub }) : null);
  }
  function showCredits(p, u, marks) {
    var c = u.credits;
    if (c.limit === null || c.limit === undefined) {
      fill(p, 'ready', h('div', null, h('div', { class: 'stat' }, h('span', { class: 'label', text: 'Credits used' }),
        h('span', { class: 'value', 'data-k': 'credits.used', 'data-v': c.used, text: num(c.used) }),
        h('span', { class: 'sub', text: 'This plan has no credit quota.' }))));
      return;
    }
    fill(p, 'ready', h('div', { class: 'meter', 'data-feature': 'credits' },
      h('div', { class: 'meter-head' }, h('span', { class: 'meter-name', text: 'Credits' }),
        h('span', { class: 'meter-figures' },
          h('span', { 'data-k': 'credits.used', 'data-v': c.used, text: num(c.used) }), ' of ',
          h('span', { 'data-k': 'credits.limit', 'data-v': c.limit, text: num(c.limit) }))),
      meterBar(c.percent, marks, 'credits'),
      h('div', { class: 'meter-foot' }, h('span', { 'data-k': 'credits.remaining', 'data-v': c.remaining, text: num(c.remaining) + ' remaining' }),
        h('span', { text: c.exceeded ? 'Quota used up' : c.percent + ' % used' }))));
  }
  function showFeatures(p, u, plan, marks) {
    var names = Object.keys(u.features || {});
    Object.keys((plan && plan.limits) || {}).forEach(function (f) { if (names.indexOf(f) < 0) names.push(f); });
    names.sort();
    if (!names.length) { empty(p, 'No usage in this cycle yet.'); return; }
    fill(p, 'ready', names.map(function (f) {
      var e = u.features[f];
      var lim = plan && plan.limits && plan.limits[f];
      var used = e ? e.quantity : 0;
      var limit = e ? e.limit : lim ? lim.limit : null;
      var mode = e ? e.mode : lim ? lim.mode : 'unlimited';
      var percent = e ? e.percent : (limit ? 0 : null);
      var remaining = e ? e.remaining : limit;
      var key = 'feature.' + f;
      var figures = h('span', { class: 'meter-figures' }, h('span', { 'data-k': key + '.used', 'data-v': used, text: num(used) }));
      if (limit !== null && limit !== undefined) append(figures, [' of ', h('span', { 'data-k': key + '.limit', 'data-v': limit, text: num(limit) })]);
      var row = h('div', { class: 'meter', 'data-feature': f },
        h('div', { class: 'meter-head' }, h('span', { class: 'meter-name' }, title(f), ' ',
          h('span', { class: 'pill ' + (mode === 'hard' ? 'grey' : mode === 'soft' ? 'warn' : 'ok'), text: mode })), figures));
      if (limit === null || limit === undefined) {
        append(row, h('div', { class: 'meter-foot' }, h('span', { text: 'Unlimited' }), h('span', { 'data-k': key + '.cost_micros', 'data-v': e ? e.cost_micros : 0, text: money(e ? e.cost_micros : 0) })));
      } else {
        append(row, meterBar(percent, marks, key));
        append(row, h('div', { class: 'meter-foot' },
          h('span', { 'data-k': key + '.remaining', 'data-v': remaining, text: (e && e.exceeded ? 'Over the limit' : num(remaining) + ' remaining') }),
          h('span', { 'data-k': key + '.cost_micros', 'data-v': e ? e.cost_micros : 0, text: money(e ? e.cost_micros : 0) })));
      }
      return row;
    }));
  }

  function loadDaily(p, base, seq) {
    var to = Date.now();
    var from = to - 29 * 86400000;
    api('GET', base + '/usage/daily?from=' + isoDay(from) + '&to=' + isoDay(to)).then(function (r) {
      if (seq !== renderSeq) return;
      if (r.status === 404 && !routeMissing(r)) { empty(p, 'No usage recorded yet.'); return; }
      if (routeMissing(r)) { unavailable(p, 'Daily usage', 'needs GET /v1/subjects/{s}/usage/daily.'); return; }
      if (!r.ok) { failed(p, r); return; }
      var byDate = {};
      var features = {};
      (r.json.days || []).forEach(function (d) { byDate[d.date] = d; Object.keys(d.features || {}).forEach(function (f) { features[f] = 1; }); });
      var days = [];
      var start = Date.parse(r.json.from + 'T00:00:00Z');
      var end = Date.parse(r.json.to + 'T00:00:00Z');
      for (var t = start; t <= end; t += 86400000) days.push({ ms: t, d: byDate[isoDay(t)] || null });
      var select = p.actions.querySelector('select');
      var chosen = select ? select.value : 'cost';
      clear(p.actions);
      select = h('select', { 'aria-label': 'Measure', id: 'daily-measure' }, h('option', { value: 'cost', text: 'Cost' }),
        Object.keys(features).sort().map(function (f) { return h('option', { value: f, text: title(f) }); }));
      select.value = features[chosen] || chosen === 'cost' ? chosen : 'cost';
      select.addEventListener('change', function () { drawDaily(p, days, select.value); });
      append(p.actions, select);
      drawDaily(p, days, select.value);
    });
  }
  function drawDaily(p, days, measure) {
    var values = days.map(function (x) {
      if (!x.d) return 0;
      if (measure === 'cost') return x.d.cost_micros || 0;
      var f = x.d.features && x.d.features[measure];
      return f ? f.quantity : 0;
    });
    var fmt = measure === 'cost' ? money : num;
    var total = values.reduce(function (a, b) { return a + b; }, 0);
    var max = Math.max.apply(null, values.concat([1]));
    var nice = niceCeil(max);
    /* Drawn at the box's own width (redrawn on resize), so text is never
     * stretched or shrunk. */
    var W = Math.max(280, Math.round(p.body.clientWidth || 720)), H = W < 500 ? 200 : 240, L = 58, R = 6, T = 10, B = 26;
    var every = W < 500 ? 10 : 5;
    p.el.redraw = function () { drawDaily(p, days, measure); };
    var cw = (W - L - R) / days.length;
    var svgEl = s('svg', { class: 'chart', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'Daily ' + measure + ', last ' + days.length + ' days' });
    for (var g = 0; g <= 4; g++) {
      var y = T + (H - T - B) * (1 - g / 4);
      svgEl.appendChild(s('line', { class: 'gridline', x1: L, x2: W - R, y1: y, y2: y }));
      svgEl.appendChild(s('text', { class: 'axis', x: L - 6, y: y + 4, 'text-anchor': 'end', text: fmt(nice * g / 4) }));
    }
    days.forEach(function (x, i) {
      var v = values[i];
      var bh = Math.max(v > 0 ? 2 : 1, (H - T - B) * v / nice);
      var rect = s('rect', { class: 'col' + (v > 0 ? '' : ' zero'), x: L + i * cw + cw * 0.15, width: cw * 0.7, y: H - B - bh, height: bh, rx: 2, 'data-date': isoDay(x.ms), 'data-v': v });
      rect.appendChild(s('title', { text: shortDay(x.ms) + ': ' + fmt(v) }));
      svgEl.appendChild(rect);
      if ((i % every === 0 && days.length - 1 - i >= every / 2) || i === days.length - 1) svgEl.appendChild(s('text', { class: 'axis', x: i === days.length - 1 ? W - R : L + i * cw + cw / 2, y: H - 8, 'text-anchor': i === days.length - 1 ? 'end' : 'middle', text: shortDay(x.ms) }));
    });
    fill(p, 'ready', h('div', { class: 'chart-wrap' },
      h('div', { class: 'muted small' }, '30-day total: ', h('strong', { 'data-k': 'daily.total', 'data-v': total, 'data-measure': measure, text: fmt(total) })),
      svgEl));
  }
  function niceCeil(v) {
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  /* Rows of a breakdown answer, whatever it is called: [{label, value}]. */
  function breakdownRows(json) {
    if (!json) return null;
    var list = null;
    ['groups', 'breakdown', 'rows', 'items', 'top', 'subjects', 'models', 'data'].some(function (k) {
      var v = json[k];
      if (Array.isArray(v)) { list = v; return true; }
      if (v && typeof v === 'object') { list = Object.keys(v).map(function (n) { var o = v[n]; return typeof o === 'object' ? Object.assign({ key: n }, o) : { key: n, value: o }; }); return true; }
      return false;
    });
    if (!list) return null;
    return list.map(function (o) {
      var label = o.subject || o.key || o.model || o.value_name || o.group || o.name || o.provider || o.plan || (typeof o.value === 'string' ? o.value : '') || 'other';
      var cost = o.cost_micros !== undefined ? o.cost_micros : null;
      var qty = o.quantity !== undefined ? o.quantity : typeof o.value === 'number' ? o.value : null;
      return { label: String(label), cost: cost, quantity: qty };
    });
  }
  function hbars(rows, key, linkSubjects) {
    var useCost = rows.some(function (r) { return r.cost !== null; });
    var max = Math.max.apply(null, rows.map(function (r) { return (useCost ? r.cost : r.quantity) || 0; }).concat([1]));
    return h('div', { class: 'hbars' }, rows.map(function (r) {
      var v = (useCost ? r.cost : r.quantity) || 0;
      var name = linkSubjects ? h('a', { class: 'name', href: '#/s/' + encodeURIComponent(r.label), title: r.label, text: r.label }) : h('span', { class: 'name', title: r.label, text: r.label });
      return h('div', { class: 'hbar-row', 'data-k': key + '.' + r.label, 'data-v': v }, name,
        h('div', { class: 'track' }, h('div', { class: 'fill', style: { width: (100 * v / max) + '%' } })),
        h('span', { class: 'amount', text: useCost ? money(v) : num(v) }));
    }));
  }
  function loadModels(p, base, seq) {
    api('GET', base + '/usage?group_by=model').then(function (r) {
      if (seq !== renderSeq) return;
      if (routeMissing(r)) { unavailable(p, 'Cost by model', 'needs per-model dimensions (GET /v1/subjects/{s}/usage?group_by=model).'); return; }
      if (r.status === 400 && r.json && r.json.error && r.json.error.field === 'group_by') { unavailable(p, 'Cost by model', 'is not configured: ' + r.json.error.message); return; }
      if (r.status === 404) { empty(p, 'No usage recorded yet.'); return; }
      if (!r.ok) { failed(p, r); return; }
      var rows = breakdownRows(r.json);
      if (!rows) {
        var nested = [];
        Object.keys(r.json.features || {}).forEach(function (f) {
          var got = breakdownRows(r.json.features[f]);
          if (got) nested = nested.concat(got);
        });
        rows = nested.length ? mergeRows(nested) : null;
      }
      if (!rows) { unavailable(p, 'Cost by model', 'needs per-model dimensions (issue 17): this server\'s /usage does not break totals down by model.'); return; }
      if (!rows.length) { empty(p, 'No AI usage in this cycle.'); return; }
      rows.sort(function (a, b) { return (b.cost || b.quantity || 0) - (a.cost || a.quantity || 0); });
      fill(p, 'ready', hbars(rows, 'model', false));
    });
  }
  function mergeRows(rows) {
    var by = {};
    rows.forEach(function (r) {
      var m = by[r.label] || (by[r.label] = { label: r.label, cost: null, quantity: null });
      if (r.cost !== null) m.cost = (m.cost || 0) + r.cost;
      if (r.quantity !== null) m.quantity = (m.quantity || 0) + r.quantity;
    });
    return Object.keys(by).map(function (k) { return by[k]; });
  }

  function alertText(a) {
    var f = a.feature === 'credits' ? 'Credits' : title(a.feature || '');
    switch (a.type) {
      case 'limit_warning': return f + ' reached ' + a.threshold_percent + ' % of the limit (' + num(a.used) + ' of ' + num(a.limit) + ')';
      case 'limit_exceeded': return f + ' reached its limit: ' + num(a.used) + ' of ' + num(a.limit) + (a.hard ? ' (hard limit: requests are refused)' : '');
      case 'billing_cycle_end': return 'Cycle closed: ' + money(a.cost_micros) + ', ' + num(a.credits_used) + ' credits';
      case 'payment_failed': return 'A payment failed' + (a.detail ? ': ' + a.detail : '');
      case 'subscription_canceled': return 'The subscription was canceled';
      case 'stripe_report_failed': return 'Usage could not be reported to Stripe' + (a.detail ? ': ' + a.detail : '');
      default: return title(a.type) + (a.detail ? ': ' + a.detail : '');
    }
  }
  function severity(a) {
    return a.type === 'limit_exceeded' || a.type === 'payment_failed' || a.type === 'stripe_report_failed' ? 'bad' : a.type === 'limit_warning' ? 'warn' : '';
  }
  function loadNotes(p, base, seq) {
    api('GET', base + '/notifications?limit=50').then(function (r) {
      if (seq !== renderSeq) return;
      if (!routeMissing(r)) { showNotes(p, base, r, true, seq); return; }
      /* Without read state: the alerts alone. */
      api('GET', base + '/alerts?limit=50').then(function (a) { if (seq === renderSeq) showNotes(p, base, a, false, seq); });
    });
  }
  function showNotes(p, base, r, readState, seq) {
    if (r.status === 404 && !routeMissing(r)) { clear(p.actions); empty(p, 'No notifications yet.'); return; }
    if (!r.ok) { failed(p, r); return; }
    var list = r.json.notifications || r.json.alerts || [];
    clear(p.actions);
    if (!list.length) { empty(p, 'No notifications yet.'); return; }
    var readHere = 0;
    list.forEach(function (n) {
      if (n.read) delete markedHere[n.alert_id];
      else if (markedHere[n.alert_id]) { n.read = true; readHere++; }
    });
    var unread = list.filter(function (n) { return readState && !n.read; });
    if (readState) {
      var count = r.json.unread !== undefined ? Math.max(0, r.json.unread - readHere) : unread.length;
      append(p.actions, h('span', { class: 'pill' + (count ? '' : ' grey'), 'data-k': 'notifications.unread', 'data-v': count, text: count + ' unread' }));
      if (unread.length) {
        append(p.actions, h('button', { type: 'button', class: 'secondary tiny', id: 'mark-all-read', text: 'Mark all read', on: { click: function () {
          markRead(p, base, unread.map(function (n) { return n.alert_id; }), seq);
        } } }));
      }
    }
    var items = list.map(function (n) {
      var unreadNow = readState && !n.read;
      var li = h('li', { class: 'note' + (unreadNow ? ' unread' : '') + (severity(n) ? ' sev-' + severity(n) : ''), 'data-alert-id': n.alert_id, 'data-read': readState ? String(!!n.read) : null },
        h('span', { class: 'dot', 'aria-hidden': 'true' }),
        h('div', null, h('div', { class: 'text', text: alertText(n) }),
          h('div', { class: 'when', title: new Date(n.occurred_at_ms).toISOString(), text: ago(n.occurred_at_ms) + ' · ' + n.type })),
        unreadNow ? h('button', { type: 'button', class: 'secondary tiny', text: 'Mark read', 'aria-label': 'Mark read: ' + alertText(n), on: { click: function () { markRead(p, base, [n.alert_id], seq); } } }) : h('span'));
      return li;
    });
    var content = [h('ul', { class: 'notes' }, items)];
    if (!readState) content.push(h('p', { class: 'muted small', text: 'Read state is not available on this server (GET /v1/subjects/{s}/notifications).' }));
    fill(p, 'ready', content);
  }
  function markRead(p, base, ids, seq) {
    ids.forEach(function (id) {
      markedHere[id] = true;
      var li = p.body.querySelector('[data-alert-id="' + CSS.escape(id) + '"]');
      if (li) { li.classList.remove('unread'); li.setAttribute('data-read', 'pending'); }
    });
    api('POST', base + '/notifications/read', { ids: ids }).then(function (r) {
      if (seq !== renderSeq) return;
      if (!r.ok) {
        ids.forEach(function (id) { delete markedHere[id]; });
        fill(p, 'error', h('div', { class: 'state error', role: 'alert', text: 'Could not mark read: ' + errorText(r) }));
        return;
      }
      /* The marks are events: folded with the next commit. */
      setTimeout(function () { loadNotes(p, base, seq); }, 400);
    });
  }

  function loadInvoices(p, base, seq) {
    Promise.all([api('GET', base + '/cycles'), api('GET', base + '/invoices')]).then(function (res) {
      if (seq !== renderSeq) return;
      var cycles = res[0], inv = res[1];
      var parts = [];
      if (cycles.ok) {
        var list = cycles.json.cycles || [];
        parts.push(h('h3', { class: 'small muted', text: 'Closed cycles (folded by tally)' }));
        parts.push(list.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'cycles-table' },
          h('thead', null, h('tr', null, h('th', { text: 'Period' }), h('th', { class: 'num', text: 'Events' }), h('th', { class: 'num', text: 'Credits' }), h('th', { class: 'num', text: 'Total' }), h('th', { text: 'Status' }))),
          h('tbody', null, list.map(function (c) {
            return h('tr', { 'data-cycle': c.start_ms },
              h('td', { text: period(c.start_ms, c.end_ms) }),
              h('td', { class: 'num', text: num(c.events) }),
              h('td', { class: 'num', text: num(c.credits_used) }),
              h('td', { class: 'num', 'data-k': 'cycle.' + c.start_ms + '.cost_micros', 'data-v': c.cost_micros, text: money(c.cost_micros) }),
              h('td', null, h('span', { class: 'pill ' + (c.final ? 'ok' : 'grey'), text: c.final ? 'Final' : 'Open for late events' })));
          })))) : h('div', { class: 'state', text: 'No closed cycle yet: the first closes at the end of this cycle.' }));
      } else if (cycles.status === 404) {
        parts.push(h('div', { class: 'state', text: 'No usage recorded yet.' }));
      } else parts.push(h('div', { class: 'state error', text: errorText(cycles) }));

      parts.push(h('h3', { class: 'small muted', style: { marginTop: '16px' }, text: 'Stripe invoices' }));
      if (routeMissing(inv)) {
        parts.push(h('div', { class: 'state unavailable', 'data-panel': 'stripe-invoices', 'data-state': 'unavailable' }, h('strong', { text: 'Not available on this server' }),
          h('span', { text: 'Stripe invoices need GET /v1/subjects/{s}/invoices (subscriptions and invoices).' })));
      } else if (inv.status === 404) {
        parts.push(h('div', { class: 'state', 'data-panel': 'stripe-invoices', 'data-state': 'empty', text: 'No Stripe customer is linked to this subject.' }));
      } else if (inv.status === 503) {
        parts.push(h('div', { class: 'state', 'data-panel': 'stripe-invoices', 'data-state': 'empty', text: 'Stripe is not configured on this server.' }));
      } else if (!inv.ok) {
        parts.push(h('div', { class: 'state error', 'data-panel': 'stripe-invoices', text: errorText(inv) }));
      } else {
        var invs = inv.json.invoices || inv.json.data || [];
        parts.push(invs.length ? h('div', { class: 'table-wrap', 'data-panel': 'stripe-invoices', 'data-state': 'ready' }, h('table', null,
          h('thead', null, h('tr', null, h('th', { text: 'Number' }), h('th', { text: 'Period' }), h('th', { text: 'Status' }), h('th', { class: 'num', text: 'Total' }), h('th', { text: 'Check' }), h('th', { text: '' }))),
          h('tbody', null, invs.map(function (i) {
            var ps = i.period_start_ms || (i.period_start ? i.period_start * 1000 : null);
            var pe = i.period_end_ms || (i.period_end ? i.period_end * 1000 : null);
            var total = i.total_micros !== undefined ? money(i.total_micros) : i.total !== undefined ? (i.total / 100).toLocaleString('en-US', { minimumFractionDigits: 2 }) + ' ' + String(i.currency || '').toUpperCase() : '–';
            var links = h('td', null);
            if (i.hosted_invoice_url && /^https:\/\//.test(i.hosted_invoice_url)) append(links, h('a', { href: i.hosted_invoice_url, target: '_blank', rel: 'noopener noreferrer', text: 'View' }));
            if (i.invoice_pdf && /^https:\/\//.test(i.invoice_pdf)) append(links, [' · ', h('a', { href: i.invoice_pdf, target: '_blank', rel: 'noopener noreferrer', text: 'PDF' })]);
            return h('tr', null, h('td', { class: 'mono', text: i.number || i.id || '' }),
              h('td', { text: ps && pe ? day(ps) + ' – ' + day(pe) : '' }),
              h('td', null, h('span', { class: 'pill ' + (i.status === 'paid' ? 'ok' : i.status === 'open' ? 'warn' : 'grey'), text: i.status || '' })),
              h('td', { class: 'num', text: total }),
              h('td', null, i.matches_folded === false ? h('span', { class: 'pill bad', text: 'Differs from tally' }) : i.matches_folded === true ? h('span', { class: 'pill ok', text: 'Matches' }) : ''),
              links);
          })))) : h('div', { class: 'state', 'data-panel': 'stripe-invoices', 'data-state': 'empty', text: 'No Stripe invoices yet.' }));
      }
      fill(p, cycles.ok ? 'ready' : cycles.status === 404 ? 'empty' : 'error', parts);
    });
  }

  /* ---- admin view ----------------------------------------------------- */

  function parseMetrics(text) {
    var out = {};
    (text || '').split('\n').forEach(function (line) {
      if (!line || line[0] === '#') return;
      var m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
      if (!m) return;
      var labels = {};
      (m[3] || '').replace(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g, function (_, k, v) { labels[k] = v; return ''; });
      (out[m[1]] = out[m[1]] || []).push({ labels: labels, value: Number(m[4]) });
    });
    return out;
  }
  function metric(ms, name, match) {
    var rows = ms[name];
    if (!rows) return null;
    var sum = 0, found = false;
    rows.forEach(function (r) {
      if (match && Object.keys(match).some(function (k) { return r.labels[k] !== match[k]; })) return;
      sum += r.value; found = true;
    });
    return found ? sum : null;
  }

  function renderAdmin(view, seq) {
    var feature = h('select', { id: 'admin-feature', 'aria-label': 'Feature' }, h('option', { value: '', text: 'All features' }));
    append(view, h('div', { class: 'page-head' },
      h('div', { class: 'title' }, h('span', { class: 'muted small', text: 'Admin' }), h('h1', { text: 'Operations' })),
      h('div', { class: 'lookup' }, feature, lookupForm('Open a subject', ''))));
    var health = panel('p-health', 'Processor health', 'This instance: readiness, lag per partition, dead letters, Stripe backlog', 'span-12');
    var top = panel('p-top', 'Top subjects by cost', 'This cycle, across the cluster', 'span-6');
    var models = panel('p-admin-models', 'Cost per model', 'This cycle, across the cluster', 'span-6');
    append(view, h('div', { class: 'grid' }, health.el, top.el, models.el));
    plans().then(function (cfg) {
      var names = {};
      ((cfg && cfg.plans) || []).forEach(function (pl) { Object.keys(pl.limits || {}).concat(Object.keys(pl.prices || {})).forEach(function (f) { names[f] = 1; }); });
      Object.keys(names).sort().forEach(function (f) { feature.appendChild(h('option', { value: f, text: title(f) })); });
    });
    var load = function () {
      if (seq !== renderSeq) return;
      loadHealth(health, seq);
      loadAnalytics(top, models, feature.value, seq);
    };
    feature.addEventListener('change', function () { loadAnalytics(top, models, feature.value, seq); });
    load();
    refreshTimer = setInterval(load, REFRESH_MS);
  }
  /* ---- admin analytics (issue 17's routes) ----------------------------
   *
   * GET /v1/analytics/top?by=cost&limit=10[&feature=F]&from=&to=
   *   {"feature", "by", "from_ms", "to_ms", "complete",
   *    "subjects": [{"subject", "quantity", "cost_micros", "events"}]}
   * GET /v1/analytics/breakdown?group_by=model[&feature=F]&from=&to=
   *   {"feature", "group_by", "from_ms", "to_ms", "complete",
   *    "total": {"quantity", "cost_micros", "events"},
   *    "groups": [{"value", "quantity", "cost_micros", "events"}]}
   *
   * "This cycle" is asked as this UTC month so far (from=YYYY-MM-DD, the
   * 1st; to=YYYY-MM-DD, today); a server that refuses those parameters
   * (400 naming from or to) is asked again without them, for its default
   * period. The period shown is the answer's from_ms/to_ms. An answer with
   * "complete": false (a partition did not answer) is marked as such. A
   * route that answers 404 "no such route" (or 405) is "not available". */
  function analyticsPeriod() {
    var now = new Date();
    var first = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
    return '&from=' + isoDay(first) + '&to=' + isoDay(now.getTime());
  }
  function analyticsGet(path) {
    return api('GET', path + analyticsPeriod()).then(function (r) {
      var e = r.json && r.json.error;
      if (r.status === 400 && e && (e.field === 'from' || e.field === 'to')) return api('GET', path);
      return r;
    });
  }
  function periodOf(json) {
    return typeof json.from_ms === 'number' && typeof json.to_ms === 'number' && json.to_ms > json.from_ms
      ? period(json.from_ms, json.to_ms) : '';
  }
  /* The panel's sub-heading: the period answered and, when the answer is
   * not complete, a visible mark. */
  function analyticsHead(p, json, key) {
    var complete = json.complete !== false;
    clear(p.actions);
    append(p.actions, h('span', { class: 'muted small', 'data-k': key + '.period', 'data-v': (json.from_ms || '') + '-' + (json.to_ms || ''), text: periodOf(json) }),
      complete ? null : h('span', { class: 'pill warn', 'data-k': key + '.complete', 'data-v': 'false', title: 'Some partitions did not answer: the figures may be low.', text: 'Incomplete' }));
    return complete ? null : h('div', { class: 'state warn-note', role: 'status', 'data-panel': key, 'data-state': 'incomplete', text: 'Incomplete answer: some partitions did not answer (moving or unreachable), so these figures may be low. They refresh every 15 s.' });
  }
  function barCell(value, max) {
    return h('td', { class: 'bar-cell' }, h('div', { class: 'track' }, h('div', { class: 'fill', style: { width: (max > 0 ? 100 * value / max : 0) + '%' } })));
  }
  function renderTop(p, json) {
    var rows = Array.isArray(json.subjects) ? json.subjects : [];
    var note = analyticsHead(p, json, 'top');
    if (!rows.length) { fill(p, 'empty', [note, h('div', { class: 'state', text: 'No usage in this period.' })]); return; }
    var byCost = json.by !== 'quantity';
    var max = Math.max.apply(null, rows.map(function (r) { return Number(byCost ? r.cost_micros : r.quantity) || 0; }).concat([0]));
    fill(p, 'ready', [note, h('div', { class: 'table-wrap' }, h('table', { id: 'top-table', class: 'bars-table' },
      h('thead', null, h('tr', null, h('th', { text: '#' }), h('th', { text: 'Subject' }), h('th', { class: 'bar-cell', text: '' }),
        h('th', { class: 'num', text: 'Cost' }), h('th', { class: 'num hide-phone', text: 'Quantity' }), h('th', { class: 'num hide-phone', text: 'Events' }))),
      h('tbody', null, rows.map(function (r, i) {
        var k = 'top.' + r.subject;
        return h('tr', { 'data-subject': r.subject },
          h('td', { class: 'muted', text: String(i + 1) }),
          h('td', { class: 'name' }, h('a', { href: '#/s/' + encodeURIComponent(r.subject), title: r.subject, text: r.subject })),
          barCell(Number(byCost ? r.cost_micros : r.quantity) || 0, max),
          h('td', { class: 'num', 'data-k': k + '.cost_micros', 'data-v': r.cost_micros, text: money(r.cost_micros) }),
          h('td', { class: 'num hide-phone', 'data-k': k + '.quantity', 'data-v': r.quantity, text: num(r.quantity) }),
          h('td', { class: 'num hide-phone', 'data-k': k + '.events', 'data-v': r.events, text: num(r.events) }));
      }))))]);
  }
  function renderBreakdown(p, json) {
    var rows = (Array.isArray(json.groups) ? json.groups : []).slice();
    var total = json.total || {};
    var note = analyticsHead(p, json, 'breakdown');
    if (!rows.length) { fill(p, 'empty', [note, h('div', { class: 'state', text: 'No AI usage in this period.' })]); return; }
    rows.sort(function (a, b) { return (Number(b.cost_micros) || 0) - (Number(a.cost_micros) || 0) || (Number(b.quantity) || 0) - (Number(a.quantity) || 0); });
    var max = Math.max.apply(null, rows.map(function (r) { return Number(r.cost_micros) || 0; }).concat([0]));
    var totalCost = Number(total.cost_micros) || 0;
    fill(p, 'ready', [note, h('div', { class: 'table-wrap' }, h('table', { id: 'breakdown-table', class: 'bars-table' },
      h('thead', null, h('tr', null, h('th', { text: title(json.group_by || 'model') }), h('th', { class: 'bar-cell', text: '' }),
        h('th', { class: 'num', text: 'Cost' }), h('th', { class: 'num hide-phone', text: 'Share' }), h('th', { class: 'num hide-phone', text: 'Events' }))),
      h('tbody', null, rows.map(function (r) {
        var k = 'breakdown.' + r.value;
        return h('tr', { 'data-group': r.value },
          h('td', { class: 'name', title: String(r.value), text: String(r.value) }),
          barCell(Number(r.cost_micros) || 0, max),
          h('td', { class: 'num', 'data-k': k + '.cost_micros', 'data-v': r.cost_micros, text: money(r.cost_micros) }),
          h('td', { class: 'num hide-phone', text: totalCost > 0 ? (100 * (Number(r.cost_micros) || 0) / totalCost).toFixed(1) + ' %' : '–' }),
          h('td', { class: 'num hide-phone', 'data-k': k + '.events', 'data-v': r.events, text: num(r.events) }));
      })),
      h('tfoot', null, h('tr', null, h('th', { text: 'Total' }), h('th', { class: 'bar-cell', text: '' }),
        h('th', { class: 'num', 'data-k': 'breakdown.total.cost_micros', 'data-v': total.cost_micros, text: money(total.cost_micros) }),
        h('th', { class: 'num hide-phone', text: '' }),
        h('th', { class: 'num hide-phone', 'data-k': 'breakdown.total.events', 'data-v': total.events, text: num(total.events) })))))]);
  }
  function loadAnalytics(top, models, feature, seq) {
    var f = feature ? '&feature=' + encodeURIComponent(feature) : '';
    analyticsGet('/v1/analytics/top?by=cost&limit=10' + f).then(function (r) {
      if (seq !== renderSeq) return;
      if (routeMissing(r)) { clear(top.actions); unavailable(top, 'Top subjects', 'need the analytics routes (GET /v1/analytics/top).'); return; }
      if (!r.ok || !r.json) { failed(top, r); return; }
      renderTop(top, r.json);
    });
    analyticsGet('/v1/analytics/breakdown?group_by=model' + f).then(function (r) {
      if (seq !== renderSeq) return;
      if (routeMissing(r)) { clear(models.actions); unavailable(models, 'Cost per model', 'needs the analytics routes (GET /v1/analytics/breakdown).'); return; }
      if (!r.ok || !r.json) { failed(models, r); return; }
      renderBreakdown(models, r.json);
    });
  }
  function loadHealth(p, seq) {
    Promise.all([api('GET', '/readyz'), api('GET', '/metrics')]).then(function (res) {
      if (seq !== renderSeq) return;
      var ready = res[0], met = res[1];
      if (!met.ok) { failed(p, met); return; }
      var ms = parseMetrics(met.text || '');
      var lag = (ms.tally_consumer_lag || []).map(function (r) { return { partition: Number(r.labels.partition), lag: r.value }; });
      lag.sort(function (a, b) { return a.partition - b.partition; });
      var committed = {};
      (ms.tally_partition_committed_offset || []).forEach(function (r) { committed[r.labels.partition] = r.value; });
      var totalLag = lag.reduce(function (a, b) { return a + b.lag; }, 0);
      var isReady = ready.status === 200;
      var behind = ready.json && ready.json.behind ? ready.json.behind.length : 0;
      var stripeOn = ms.tally_stripe_oldest_unreported_seconds !== undefined;
      var oldest = metric(ms, 'tally_stripe_oldest_unreported_seconds');
      var tiles = h('div', { class: 'health' },
        tile('Readiness', isReady ? 'Ready' : 'Not ready', 'ready', isReady ? 1 : 0, isReady ? 'ok' : 'bad', isReady ? 'every assigned partition caught up' : (behind ? behind + ' partition(s) replaying' : errorText(ready))),
        tile('Consumer lag', num(totalLag), 'lag.total', totalLag, totalLag > 1000 ? 'warn' : 'ok', 'records, ' + lag.length + ' partition(s) here'),
        tile('Dead letters', num(metric(ms, 'tally_dead_letters_total')), 'dead_letters', metric(ms, 'tally_dead_letters_total'), metric(ms, 'tally_dead_letters_total') ? 'warn' : 'ok', 'records sent to the DLQ'),
        tile('Events folded', num(metric(ms, 'tally_events_folded_total')), 'events_folded', metric(ms, 'tally_events_folded_total'), 'ok', num(metric(ms, 'tally_duplicates_total')) + ' duplicates ignored'),
        tile('Outbox', num(metric(ms, 'tally_outbox_entries')), 'outbox', metric(ms, 'tally_outbox_entries'), 'ok', 'outputs awaiting Kafka'),
        stripeOn ? tile('Stripe backlog', oldest ? oldest + ' s' : 'None', 'stripe.oldest_s', oldest, oldest > 3600 ? 'bad' : oldest > 60 ? 'warn' : 'ok',
          num(metric(ms, 'tally_stripe_reports_total', { result: 'sent' })) + ' sent, ' + num(metric(ms, 'tally_stripe_reports_total', { result: 'failed' })) + ' failed')
          : tile('Stripe backlog', 'Off', 'stripe.oldest_s', '', 'grey', 'usage reporting not configured'));
      var table = lag.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'lag-table' },
        h('thead', null, h('tr', null, h('th', { text: 'Partition' }), h('th', { class: 'num', text: 'Committed offset' }), h('th', { class: 'num', text: 'Lag' }))),
        h('tbody', null, lag.map(function (l) {
          return h('tr', { 'data-partition': l.partition }, h('td', { text: String(l.partition) }),
            h('td', { class: 'num', text: committed[l.partition] >= 0 ? num(committed[l.partition]) : 'none yet' }),
            h('td', { class: 'num', 'data-k': 'lag.' + l.partition, 'data-v': l.lag, text: num(l.lag) }));
        })))) : h('div', { class: 'state', text: 'No partition is assigned to this instance.' });
      fill(p, 'ready', [tiles, table]);
    });
  }
  function tile(label, value, key, raw, tone, sub) {
    return h('div', { class: 'tile' }, h('div', { class: 'label', text: label }),
      h('div', { class: 'value' }, h('span', { 'data-k': key, 'data-v': raw === null ? '' : raw, text: value }), ' ', h('span', { class: 'pill ' + tone, text: tone === 'ok' ? 'OK' : tone === 'warn' ? 'Check' : tone === 'bad' ? 'Alert' : '—' })),
      h('div', { class: 'muted small', text: sub }));
  }

  /* ---- start ---------------------------------------------------------- */

  var resizeTimer = null;
  window.addEventListener('resize', function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      var d = document.getElementById('p-daily');
      if (d && d.redraw) d.redraw();
    }, 100);
  });

  document.addEventListener('DOMContentLoaded', function () {
    $('signin-form').addEventListener('submit', onSignin);
    $('signout').addEventListener('click', function () { signOut('Signed out.'); });
    window.addEventListener('hashchange', render);
    try { apiKey = sessionStorage.getItem(KEY_STORE); } catch (e) { apiKey = null; }
    render();
  });
})();
