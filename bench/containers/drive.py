#!/usr/bin/env python3
"""Sends N signed deployment webhooks one after another (each waits for the last to end), and
prints per deployment: webhook-to-success (the success status's arrival at the fake GitHub),
and the phases from Dropship's own log. Usage: drive.py DROPSHIP GITHUB SECRET TOKEN N FIRST_ID"""
import hashlib, hmac, json, re, sys, time, urllib.request

dropship, github, secret, token, n, first = sys.argv[1:7]
payload = json.load(open("tests/fixtures/github/webhooks/deployment.created.json"))
rows = []
for i in range(int(n)):
    gid = int(first) + i
    payload["deployment"].update(id=gid, sha="%040x" % gid, environment="production", task="deploy")
    payload["repository"]["full_name"] = "acme/bench"
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(dropship + "/webhooks/github", data=body, headers={
        "X-GitHub-Event": "deployment", "X-Hub-Signature-256": signature,
        "Content-Type": "application/json"})
    sent = time.time() * 1000
    answer = json.load(urllib.request.urlopen(request))
    deadline = time.time() + 60
    while True:
        states = json.load(urllib.request.urlopen(f"{github}/_statuses/{gid}"))
        final = [s for s in states if s[0] in ("success", "failure", "error")]
        if final:
            break
        if time.time() > deadline:
            sys.exit(f"deployment {gid} did not finish")
        time.sleep(0.002)
    state, at = final[0]
    log = urllib.request.urlopen(urllib.request.Request(
        f"{dropship}/api/deployments/{answer['id']}/log",
        headers={"Authorization": "Bearer " + token})).read().decode()
    if state != "success":
        sys.exit(f"deployment {gid} ended {state}:\n{log}")
    m = re.search(r"in ms: image (\d+), start (\d+), health (\d+), switch (\d+)", log)
    image, start, health, switch = map(int, m.groups())
    total = at - sent
    rows.append((total, image, start, health, switch, total - start - health))
    # The old version stops after the status; the next deployment starts once it has, so
    # each one is measured alone rather than waiting on the previous one's stop.
    while i > 0 and not re.search(r"old version of \S+ stopped", log):
        time.sleep(0.01)
        log = urllib.request.urlopen(urllib.request.Request(
            f"{dropship}/api/deployments/{answer['id']}/log",
            headers={"Authorization": "Bearer " + token})).read().decode()
    stopped = re.search(r"old version of \S+ stopped in (\d+) ms", log)
    rows[-1] += (int(stopped.group(1)) if stopped else 0,)
print("all times in ms; switch = handing the old version to its background stop")
print("run  total  image(pull)  start  health  switch  overhead(total-start-health)  old stopped after")
for i, r in enumerate(rows):
    print(f"{i + 1:>3} {r[0]:>6.0f} {r[1]:>12} {r[2]:>6} {r[3]:>7} {r[4]:>7} {r[5]:>8.0f} {r[6]:>25}")
rows.sort(key=lambda r: r[5])
median = rows[len(rows) // 2]
print(f"median overhead {median[5]:.0f} ms (total {median[0]:.0f} ms); worst overhead {rows[-1][5]:.0f} ms")
