#!/usr/bin/env python3
"""Writes N signed `deployment` deliveries, one per line: signature TAB body.

Usage: gen.py SECRET N OUT
Each body is a minimal but complete deployment.created payload with a distinct deployment id.
"""
import hashlib, hmac, json, sys

secret, count, out = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
with open(out, "w") as f:
    for i in range(1, count + 1):
        body = json.dumps({
            "action": "created",
            "deployment": {"id": 1_000_000 + i, "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                           "ref": "main", "task": "deploy", "environment": f"bench-{i}", "payload": {},
                           "description": None, "creator": {"login": "bench"}},
            "repository": {"full_name": "acme/shop"},
        }, separators=(",", ":"))
        sig = "sha256=" + hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
        f.write(f"{sig}\t{body}\n")
